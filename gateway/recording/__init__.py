"""Recording of accepted readings to day files, and exporting them for fine-tuning."""
