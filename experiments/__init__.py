"""One-off experiments behind the measurements in results/, run from the repository root
(`python -m experiments.probe_sweep`); not part of the installed package."""
