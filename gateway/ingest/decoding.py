"""The decode step: RawUplink -> (Reading, profile), through the decoder plugins.

``decode_uplink(pm, uplink, profiles)`` is what the pipeline calls per uplink. It picks the
device profile, runs the decoder the profile names (or auto-detection), and maps the
result to channels (gateway.ingest.profiles.to_reading). It raises DecodeError whose ``reason``
(the message up to the first colon, see ``reason_of``) is one of:

- ``no_decoder``: no decoder claimed the payload (auto mode), or the named one declined;
- ``unknown_codec``: the profile names a codec no plugin offers;
- ``bad_decoder_result``: a plugin returned something other than a dict;
- ``no_channels``: the decoded result has no numeric channel (in auto mode, when the
  network server's object has none, the payload decoders get a try first);
- any reason a decoder raised (``lpp_truncated``, ``bad_length``, ``non_finite``, ...).

Exceptions other than DecodeError come from plugin bugs and propagate (the pipeline counts
them as ``decoder_crashed``).

Speed: the hook implementations are looked up once per plugin manager (a dispatch table
kept in a weak map and rebuilt when the list of decode implementations changes). A named
codec calls its plugin's function directly; auto mode walks the implementations in
pluggy's own call order (``network_server`` first, ``cayenne_lpp`` last). If any decode
implementation is a hook wrapper, the ordinary hook call is used instead.

Chunks (``UplinkDecoder.decode_chunk``): the uplinks whose profile names a codec whose plugin
implements ``lora_gateway_decode_batch`` are decoded in one call per codec; every uplink the
batch left out (None), and all others, take the per-uplink path, so results, rejects and
their reasons are those of ``decode`` (``tests/test_columnar_equal.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from gateway.ingest.profiles import DEFAULT_PROFILE, ProfileConfig, ProfileSet, build_reading
from gateway.ingest.quarantine import Quarantine
from gateway.types import DecodeError, RawUplink, Reading

log = logging.getLogger(__name__)

DecodeFn = Callable[[RawUplink, "str | None"], "dict[str, Any] | None"]


def reason_of(exc: BaseException) -> str:
    """The short reason code of a DecodeError (the message up to the first colon)."""
    return str(exc).split(":", 1)[0].strip() or "decode_error"


def _caller(impl: Any) -> DecodeFn:
    names = tuple(impl.argnames)
    fn = impl.function
    if names == ("uplink", "codec"):
        return fn  # type: ignore[no-any-return,unused-ignore]
    return lambda uplink, codec: fn(**{n: v for n, v in (("uplink", uplink), ("codec", codec)) if n in names})


class _Dispatch:
    """Decode implementations of one plugin manager, resolved once."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        # no reference to pm is kept: it is the key of the weak map holding this table
        impls = pm.hook.lora_gateway_decode.get_hookimpls()
        self.impls = impls
        self.use_hook = any(getattr(i, "hookwrapper", False) or getattr(i, "wrapper", False) for i in impls)
        by_plugin: dict[str, DecodeFn] = {impl.plugin_name: _caller(impl) for impl in impls}
        codec_of_plugin: dict[str, str] = {}
        self.by_codec: dict[str, tuple[str, DecodeFn]] = {}
        for impl in pm.hook.lora_gateway_codecs.get_hookimpls():
            codecs: list[str] = list(impl.function() or [])  # type: ignore[call-overload,unused-ignore]
            for codec in codecs:
                codec_of_plugin.setdefault(impl.plugin_name, codec)
                if impl.plugin_name in by_plugin and codec not in self.by_codec:
                    self.by_codec[codec] = (codec, by_plugin[impl.plugin_name])
        # pluggy calls the last implementation first; keep its order for auto mode
        self.chain: list[tuple[str, DecodeFn]] = [
            (codec_of_plugin.get(impl.plugin_name, impl.plugin_name), by_plugin[impl.plugin_name])
            for impl in reversed(impls)
        ]
        self.codecs = sorted(self.by_codec)
        # codec -> the batch decoder of the plugin that lists it (lora_gateway_decode_batch)
        batch_of_plugin = {impl.plugin_name: impl.function for impl in pm.hook.lora_gateway_decode_batch.get_hookimpls()
                           if tuple(impl.argnames) == ("uplinks", "codec")}
        self.batch: dict[str, Callable[[list[RawUplink], str], Any]] = {}
        for plugin, codec in codec_of_plugin.items():
            fn = batch_of_plugin.get(plugin)
            if fn is not None and codec in self.by_codec and self.by_codec[codec][1] is by_plugin.get(plugin):
                self.batch[codec] = fn


_DISPATCH: weakref.WeakKeyDictionary[pluggy.PluginManager, _Dispatch] = weakref.WeakKeyDictionary()


def _dispatch(pm: pluggy.PluginManager) -> _Dispatch:
    d = _DISPATCH.get(pm)
    if d is None or d.impls != pm.hook.lora_gateway_decode.get_hookimpls():
        d = _Dispatch(pm)
        _DISPATCH[pm] = d
    return d


def available_codecs(pm: pluggy.PluginManager) -> list[str]:
    """Sorted codec names the loaded decoder plugins offer."""
    return list(_dispatch(pm).codecs)


def _checked(label: str, result: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(result, dict):
        raise DecodeError(f"bad_decoder_result: {label} returned {type(result).__name__}")
    return label, result


def decode_fields(pm: pluggy.PluginManager, uplink: RawUplink,
                  codec: str | None = None) -> tuple[str, dict[str, Any]]:
    """Run the decoders on ``uplink``; return (codec of the decoder that answered, fields).

    ``codec`` None means auto-detection. Raises DecodeError (see the module docstring).
    """
    d = _dispatch(pm)
    if codec is not None:
        entry = d.by_codec.get(codec)
        if entry is not None:
            result = entry[1](uplink, codec)
            if result is None:
                raise DecodeError(f"no_decoder: codec {codec!r} declined the payload")
            return _checked(entry[0], result)
        # a plugin that answers to codec names it does not list
        result = pm.hook.lora_gateway_decode(uplink=uplink, codec=codec)
        if result is None:
            raise DecodeError(f"unknown_codec: no decoder plugin offers {codec!r}")
        return _checked(codec, result)
    if d.use_hook:
        result = pm.hook.lora_gateway_decode(uplink=uplink, codec=None)
        if result is None:
            raise DecodeError("no_decoder: no decoder recognised the payload")
        return _checked("auto", result)
    for label, call in d.chain:
        result = call(uplink, None)
        if result is not None:
            return _checked(label, result)
    raise DecodeError("no_decoder: no decoder recognised the payload")


def decode_with_profile(pm: pluggy.PluginManager, uplink: RawUplink,
                        profile: ProfileConfig) -> tuple[Reading, str, dict[str, Any]]:
    """Decode ``uplink`` under ``profile``: (reading, decoder codec, raw decoded fields)."""
    label, fields = decode_fields(pm, uplink, profile.codec)
    reading, n_channels = build_reading(uplink, fields, profile)
    if n_channels == 0 and profile.codec is None and uplink.decoded is not None and uplink.payload:
        # the uplink came with a pre-decoded object that had nothing numeric (e.g. "3.384 V"
        # strings): let the payload decoders try the bytes alone before giving up
        try:
            label2, fields2 = decode_fields(pm, dataclasses.replace(uplink, decoded=None), None)
        except DecodeError:
            pass
        else:
            reading2, n2 = build_reading(uplink, fields2, profile)
            if n2:
                return reading2, label2, fields2
    if n_channels == 0:
        raise DecodeError(f"no_channels: {label} produced no numeric channel")
    return reading, label, fields


def decode_uplink(pm: pluggy.PluginManager, uplink: RawUplink,
                  profiles: ProfileSet | Iterable[ProfileConfig] | None) -> tuple[Reading, ProfileConfig]:
    """Decode one uplink for the pipeline: returns (Reading, the profile that matched).

    Pass a ``ProfileSet`` (built once); a plain list is accepted but is re-indexed per call.
    Raises DecodeError with a reason code (``no_decoder``, ``no_channels``, ...).
    """
    if isinstance(profiles, ProfileSet):
        profile = profiles.match(uplink)
    elif profiles is None:
        profile = DEFAULT_PROFILE
    else:
        profile = ProfileSet(profiles).match(uplink)
    reading, _, _ = decode_with_profile(pm, uplink, profile)
    return reading, profile


class UplinkDecoder:
    """The pipeline's decode stage: an uplink in, ``(reading, profile)`` out, or None after
    the uplink was quarantined with its reason (a decoder's DecodeError reason, or
    ``decoder_crashed`` when a plugin raised anything else). Never raises."""

    def __init__(self, pm: pluggy.PluginManager, profiles: ProfileSet, quarantine: Quarantine) -> None:
        self.pm = pm
        self.profiles = profiles
        self.quarantine = quarantine

    def decode(self, uplink: RawUplink) -> tuple[Reading, ProfileConfig] | None:
        return self._guarded(uplink, decode_uplink, self.pm, uplink, self.profiles)

    def _guarded(self, uplink: RawUplink, fn: Callable[..., tuple[Reading, ProfileConfig]],
                 *args: Any) -> tuple[Reading, ProfileConfig] | None:
        try:
            return fn(*args)
        except DecodeError as exc:
            self.quarantine.put(uplink, exc.reason or "decode_error", str(exc))
        except Exception as exc:  # noqa: BLE001 - a plugin bug must not stop the gateway; counted and kept
            self.quarantine.put(uplink, "decoder_crashed", f"{type(exc).__name__}: {exc}")
            log.exception("decoder raised on an uplink from %s", uplink.device_id)
        return None

    def decode_chunk(self, uplinks: list[RawUplink]) -> list[tuple[Reading, ProfileConfig] | None]:
        """``decode`` for each uplink of a chunk, in order, with batch decoders per codec
        (see the module docstring)."""
        d = _dispatch(self.pm)
        match = self.profiles.match
        profiles = [match(u) for u in uplinks]
        fields: dict[int, dict[str, Any]] = {}
        if d.batch and not d.use_hook:
            by_codec: dict[str, list[int]] = {}
            for i, profile in enumerate(profiles):
                if profile.codec in d.batch:
                    by_codec.setdefault(profile.codec, []).append(i)
            for codec, idx in by_codec.items():
                try:
                    results = d.batch[codec]([uplinks[i] for i in idx], codec)
                except Exception:  # noqa: BLE001 - the per-uplink path decides (and counts) instead
                    log.exception("batch decoder of %s failed; decoding one by one", codec)
                    continue
                if isinstance(results, list) and len(results) == len(idx):
                    fields.update((i, r) for i, r in zip(idx, results) if isinstance(r, dict))
        out: list[tuple[Reading, ProfileConfig] | None] = []
        for i, uplink in enumerate(uplinks):
            got = fields.get(i)
            if got is None:
                out.append(self.decode(uplink))
            else:
                out.append(self._guarded(uplink, _from_fields, uplink, profiles[i], got))
        return out


def _from_fields(uplink: RawUplink, profile: ProfileConfig, fields: dict[str, Any]) -> tuple[Reading, ProfileConfig]:
    """What ``decode_with_profile`` does after a named codec answered with ``fields``."""
    reading, n_channels = build_reading(uplink, fields, profile)
    if n_channels == 0:
        raise DecodeError(f"no_channels: {profile.codec} produced no numeric channel")
    return reading, profile
