"""What every side of the suite runs on: device and seeds, the process group (torchrun), run folders
and atomic writes, precision and compile, user errors, and the one training engine."""
