"""The ``lora-gateway model ...`` commands, and ``UserError`` shared by every command line."""
