"""The `isl` command line: one entry point, one module per subcommand.

Each command module defines:

* `SUMMARY`: one line for `isl --help`;
* `DESCRIPTION`: the long help printed by `isl COMMAND --help`;
* `define_flags(flag_values)`: its absl flags, on a private `FlagValues`;
* `run(flag_values, positional) -> dict`: does the work, prints progress
  and returns the result (paths written and figures) that `--json` prints;
* `OUTPUT_FLAGS` (optional): the flags naming folders it writes; a folder
  this run created is removed if the command fails while it is still empty.
"""
