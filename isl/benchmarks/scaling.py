"""`isl benchmark scaling`: seconds and peak memory of each command against image size.

For each image side (512, 1024, 2048, 4096 by default) a well is made by
mirroring the sample well (`isl.benchmarks.mirror.mirror_well`: the sample
reflected about its edges as often as needed, then cropped; same file names), converted,
and each command runs in its own child process, measured by that process's
peak RSS (`os.wait4` in a small launcher process, so neither the benchmark's
own memory nor an earlier command's enters the figure). The table
prints the CPU model and the load average before and after, because the
figures on a shared machine move with the other jobs.
"""

from __future__ import annotations

import os
import shutil

from isl import errors
from isl.benchmarks import mirror


SIZES = (512, 1024, 2048, 4096)
COMMANDS = ("predict", "evaluate", "readout", "train", "convert", "export", "predict_unet", "predict_readout",
            "predict_ensemble")
# The predict rows of the other model kinds: command -> the option naming its model folder (each `isl predict`
# with its defaults, truth present: panels and, with a distribution, calibration TIFFs).
KIND_PREDICTS = {"predict_unet": ("unet_model_dir", "a unet_regression model"),
                 "predict_readout": ("readout_model_dir", "a read-out model folder"),
                 "predict_ensemble": ("ensemble_model_dir", "an ensemble folder")}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), and the logical CPUs this process may use."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} CPUs"


# Runs argv[2:] as its child and writes the child's exit code, ru_maxrss (KB) and CPU seconds (user + system) to
# the file argv[1]. A process
# started by fork (or vfork) keeps the parent's peak RSS across exec, so the command is started from this small
# process, not from the benchmark's (which may hold TensorFlow), and its figure is its own.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as handle:
    handle.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
"""


def measure(command: list[str], log_path: str) -> dict:
    """Runs `command` as a child process; its own wall seconds, CPU seconds, peak RSS (GB), exit code and the load
    before/after. On a machine shared with other jobs the wall time moves with their load; the CPU seconds (user +
    system, all threads) move much less, so a ratio of sizes is steadier in CPU seconds.

    The peak is the command's `ru_maxrss` from `os.wait4` in a small launcher
    process (`_LAUNCHER`), that process alone: the `isl` commands do their
    work in-process, so it is the command's.
    """
    import subprocess
    import sys
    import time

    load_before = os.getloadavg()[0]
    figures = log_path + ".rusage"
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        subprocess.run([sys.executable, "-c", _LAUNCHER, figures, *command], stdout=log, stderr=subprocess.STDOUT,
                       check=False)
    seconds = time.perf_counter() - start
    try:
        with open(figures, encoding="utf-8") as handle:
            code, peak, cpu = handle.read().split()
        exit_code, peak_kb, cpu_seconds = int(code), int(peak), float(cpu)
        os.remove(figures)
    except (OSError, ValueError):
        exit_code, peak_kb, cpu_seconds = -1, 0, 0.0
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "peak_rss_gb": round(peak_kb * 1024 / 1e9, 2),
        "exit_code": exit_code,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "log": log_path,
    }


def _commands(name: str, size: int, work_dir: str, model_dir: str, steps: int,
              **kind_model_dirs: str | None) -> list[list[str]]:
    """The `isl` command line(s) of benchmark command `name` on the `size` well (setup steps first).

    predict (the concordance model's heads, defaults: truth, panels, calibration), evaluate (of that
    prediction), readout (fit on rows 0:3/4, scored on 7/8:1), train (`--recipe=unet_regression`, `steps`),
    convert (the whole well into one record), export (`--format=bioimageio` with the well as `--sample_well`)
    and predict_unet, predict_readout, predict_ensemble (`KIND_PREDICTS`: `unet_model_dir`, `readout_model_dir`,
    `ensemble_model_dir`, each predicted with the defaults).
    """
    import sys

    isl = [sys.executable, "-m", "isl"]
    well = os.path.join(work_dir, f"well{size}")
    train_rows, val_rows = size * 3 // 4, size * 7 // 8
    if name == "predict":
        return [isl + ["predict", f"--model_dir={model_dir}", f"--input_dir={well}",
                       f"--output_dir={os.path.join(work_dir, f'predict{size}')}", "--noprogress"]]
    if name == "evaluate":
        return [isl + ["evaluate", f"--predictions_dir={os.path.join(work_dir, f'predict{size}')}",
                       f"--truth_dir={well}", f"--output_dir={os.path.join(work_dir, f'evaluate{size}')}"]]
    if name == "readout":
        return [isl + ["readout", f"--model_dir={model_dir}", f"--train_dir={well}", f"--region=0:{train_rows},:",
                       f"--eval_dir={well}", f"--eval_region={val_rows}:{size},:",
                       f"--output_dir={os.path.join(work_dir, f'readout{size}')}", "--noprogress"]]
    if name == "train":
        records = os.path.join(work_dir, f"records{size}")
        convert = [] if os.path.isdir(records) else [isl + [
            "convert", f"--input_dir={well}", f"--output_dir={records}", f"--region=0:{train_rows},:",
            f"--val_region={train_rows}:{val_rows},:", f"--eval_region={val_rows}:{size},:"]]
        return convert + [isl + ["train", f"--data_dir={records}",
                                 f"--model_dir={os.path.join(work_dir, f'unet{size}')}", "--preset=condition_b",
                                 "--recipe=unet_regression", f"--steps={steps}", "--noprogress"]]
    if name == "convert":
        return [isl + ["convert", f"--input_dir={well}", f"--output_dir={os.path.join(work_dir, f'convert{size}')}",
                       "--num_shards=1", "--overwrite"]]
    if name == "export":
        export_dir = os.path.join(work_dir, f"export{size}")
        if os.path.isdir(export_dir):  # A bioimage.io package is never written over: an earlier run's goes.
            shutil.rmtree(export_dir)
        if os.path.isfile(export_dir + ".zip"):
            os.remove(export_dir + ".zip")
        return [isl + ["export", f"--model_dir={model_dir}", f"--export_dir={export_dir}", "--format=bioimageio",
                       f"--sample_well={well}"]]
    if name in KIND_PREDICTS:
        option, words = KIND_PREDICTS[name]
        kind_model_dir = kind_model_dirs.get(option)
        if not kind_model_dir:
            raise errors.InputError(f"isl benchmark scaling: {name} needs --{option} ({words}).")
        return [isl + ["predict", f"--model_dir={kind_model_dir}", f"--input_dir={well}",
                       f"--output_dir={os.path.join(work_dir, f'{name}{size}')}", "--noprogress"]]
    raise errors.InputError(f"unknown scaling command {name!r}; known: {', '.join(COMMANDS)}")


def run(options) -> dict:
    """The memory-scaling table: per image side and command, seconds and the command's own peak RSS.

    Needs `options.sample_dir` (the well to mirror) and, for predict,
    evaluate and readout, `options.model_dir` (a trained concordance model);
    `options.data_dir` is the work folder (mirrored wells, records, outputs;
    reused when present). Sizes and commands come from `options.sizes` and
    `options.commands`; train runs `options.steps` steps (default 5) of the
    U-Net regression recipe on a converted three-way region split.
    """
    sizes = [int(size) for size in str(options.sizes).split(",") if size.strip()]
    commands = [name.strip() for name in str(options.commands).split(",") if name.strip()]
    unknown = [name for name in commands if name not in COMMANDS]
    if unknown or not commands:
        raise errors.InputError(f"--commands: {', '.join(unknown) or 'none'} unknown; known: {', '.join(COMMANDS)}")
    if not options.sample_dir:
        raise errors.InputError("isl benchmark scaling needs --sample_dir (the well to mirror to each size).")
    if not options.data_dir:
        raise errors.InputError("isl benchmark scaling needs --data_dir: a work folder for the mirrored wells.")
    needing = [name for name in commands if name not in ("train", "convert", *KIND_PREDICTS)]
    if needing and not options.model_dir:
        raise errors.InputError(f"isl benchmark scaling: --model_dir (a trained model) is needed for "
                                f"{', '.join(needing)}.")
    kind_model_dirs = {option: getattr(options, option) for option, _ in KIND_PREDICTS.values()}
    for name, (option, words) in KIND_PREDICTS.items():
        if name in commands and not kind_model_dirs[option]:
            raise errors.InputError(f"isl benchmark scaling: {name} needs --{option} ({words}).")
    steps = options.steps or 5
    work_dir = options.data_dir
    os.makedirs(work_dir, exist_ok=True)
    print(f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.2f} at the start.", flush=True)
    rows = []
    for size in sizes:
        if not os.path.isdir(os.path.join(work_dir, f"well{size}")):
            mirror.mirror_well(options.sample_dir, os.path.join(work_dir, f"well{size}"), (size, size))
        for name in commands:
            result: dict = {}
            for index, command in enumerate(_commands(name, size, work_dir, options.model_dir, steps,
                                                      **kind_model_dirs)):
                result = measure(command, os.path.join(work_dir, f"{name}{size}.{index}.log"))
                if result["exit_code"] != 0:
                    break
            rows.append({"size": size, "command": name, **result})
            print(f"{size}² {name}: {result['seconds']} s ({result['cpu_seconds']} CPU s), peak RSS "
                  f"{result['peak_rss_gb']} GB, exit "
                  f"{result['exit_code']}, load {result['load_before']} -> {result['load_after']}", flush=True)
    print("| image | " + " | ".join(commands) + " |")
    print("|---|" + "---|" * len(commands))
    for size in sizes:
        cells = [next(row for row in rows if row["size"] == size and row["command"] == name) for name in commands]
        print(f"| {size}² | " + " | ".join(
            f"{cell['seconds']} s ({cell['cpu_seconds']} CPU s), {cell['peak_rss_gb']} GB"
            + ("" if cell["exit_code"] == 0 else " (failed)")
            for cell in cells) + " |")
    for line in growth_lines(rows):
        print(line)
    return {"cpu": cpu_model(), "rows": rows}


def growth_lines(rows: list[dict], small: int = 1024, large: int = 4096, bound: float = 17.0) -> list[str]:
    """Per command measured at both sizes in this run: its wall and CPU seconds at `large` over `small`, against
    the pixel ratio (issue 25: a 4096² well in at most 17x the 1024² time)."""
    lines = []
    for name in dict.fromkeys(row["command"] for row in rows):
        pair = [next((row for row in rows if row["command"] == name and row["size"] == size
                      and row["exit_code"] == 0), None) for size in (small, large)]
        if None in pair or not pair[0]["seconds"]:
            continue
        wall = pair[1]["seconds"] / pair[0]["seconds"]
        cpu = pair[1]["cpu_seconds"] / pair[0]["cpu_seconds"] if pair[0]["cpu_seconds"] else float("nan")
        pixels = (large / small) ** 2
        lines.append(f"{name}: {large}² / {small}² = {wall:.1f}x wall, {cpu:.1f}x CPU s for {pixels:.0f}x the pixels "
                     f"({'within' if wall <= bound else 'over'} {bound:g}x in wall time)")
    return lines
