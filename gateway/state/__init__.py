"""Device state that outlives the process: the per-device codec (``codec``, also used to hand
devices to another gateway), its safe binary encoding (``tree``) and checkpoints in the state
dir (``checkpoint``)."""
