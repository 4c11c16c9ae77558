"""Sub-commands of the eagle-hf CLI (see eagle_hf.cli)."""
