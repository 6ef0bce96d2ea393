"""The `bench` command line, presets and result tables."""
