"""`isl convert`: Convert folders of microscope images into sharded TFRecords."""

from __future__ import annotations

import os
import sys
from typing import Any

SUMMARY = "Convert folders of microscope images into sharded TFRecords."
DESCRIPTION = """
Convert folders of microscope images into sharded TFRecords.

Reads wells (fields of view) from each --input_dir, recursively, in either
layout (data/README.md): the lab's comma-separated file names (the released
sample form `channel-X,z_depth-N` or the nested form of the paper data
`channel,value-X,...,kind,value-ORIGINAL`; PREDICTED files are skipped), or a
folder per field of view with manifest.csv / manifest.json. 8- and 16-bit
PNG (grey or grey-palette) and TIFF: multi-page, OME-TIFF and ImageJ
hyperstacks with z and channel axes; OME-Zarr, CZI, LIF and ND2 with the
optional readers (pip install -e '.[formats]'). 10-, 12- or 14-bit values in
16-bit files: say so in the manifest's bits column (or the OME metadata).

--normalization for the transmitted light (recorded in dataset.json; `isl
train` copies it into the model's config.json and `isl predict` applies it):
  none        (default) value / max, for data normalised like the paper's;
  paper       per z slice: mean 0.5 and the paper's fixed spread (std 0.1156),
              clipped to [0, 1] -- raw microscope data for the shipped models;
  percentile  CSBDeep's 3rd..99.8th percentile of the stack -> [0, 1], clipped.
A stack far from the paper's statistics (mean 0.5, std about 0.116) gets a
warning saying what to do. Labels are never normalised, only divided by the
maximum of their bit depth.

Writes one tf.train.Example per well (lossless uint16 planes, metadata) into
OUTPUT_DIR/train-00000-of-0000N.tfrecord ... and eval-... shards, plus
OUTPUT_DIR/dataset.json (channels, z counts, image sizes, example counts,
source files). Every N-th well (--eval_every, 8 as in the paper) or the
named --eval_wells are held out for evaluation.

With one well (the released Condition B sample), split by region instead:
--region crops the training examples to a rectangle and --eval_region writes
each well again, cropped to a rectangle that does not overlap it, as the
evaluation example (rows r0:r1, columns c0:c1, image pixels, ends exclusive).

Validation (a third split, val-... shards): --val_wells (with held-out wells)
or --val_region (with --eval_region) holds out data that `isl train` uses to
choose among its checkpoints (train.keep_best); the evaluation split is then
only reported, never used to choose. A validation split overlapping the
evaluation split, or the training region, is refused.

The channel vocabulary comes from the config (--preset, --config, --set), e.g.
  --set 'channels.target_channels=["DAPI_CONFOCAL","GFAP_CONFOCAL"]'
A file of any other channel is an error naming it. --channel_map=FROM=TO
renames your files' channels first (e.g. HOECHST=DAPI_CONFOCAL, or
BF=BRIGHTFIELD); it is recorded in dataset.json, and `isl train` copies it
into the model's config.json so prediction reads raw files the same way.

Atomic: everything is checked before writing, and on any failure nothing is
left in OUTPUT_DIR. Bad input exits with code 2 and a message naming the file.

Examples:
  isl convert --input_dir=condition_b_sample --output_dir=records --num_shards=1
  isl convert --input_dir=condition_b_sample --output_dir=records \
      --region=0:768,0:1024 --val_region=768:896,0:1024 --eval_region=896:1024,0:1024
  isl convert --input_dir=plates --output_dir=records --eval_wells=B7,C7 --val_wells=B6
"""


# Folders this command writes (isl.cli.main removes them when a failed run leaves them empty).
OUTPUT_FLAGS = ("output_dir",)


def define_flags(flag_values: Any) -> None:
    from absl import flags

    flags.DEFINE_multi_string("input_dir", [], "Folder of wells (repeatable).", flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "Dataset folder to create.", flag_values=flag_values)
    flags.DEFINE_integer("num_shards", 1, "Number of training shards.", flag_values=flag_values)
    flags.DEFINE_integer("num_eval_shards", None, "Number of evaluation shards (default ceil(num_shards/8)).",
                         flag_values=flag_values)
    flags.DEFINE_integer("eval_every", 8, "Hold out every N-th well (sorted by name) for evaluation; 0: none.",
                         flag_values=flag_values)
    flags.DEFINE_list("eval_wells", [], "Hold out these wells instead (name, well id such as A4, or folder name).",
                      flag_values=flag_values)
    flags.DEFINE_string("region", None, "Crop the training examples to r0:r1,c0:c1 (image pixels, ends exclusive).",
                        flag_values=flag_values)
    flags.DEFINE_string("eval_region", None, "Hold out this rectangle r0:r1,c0:c1 of every well for evaluation "
                        "(instead of whole wells); it must not overlap --region.", flag_values=flag_values)
    flags.DEFINE_list("val_wells", [], "Hold out these wells for validation (the split train.keep_best selects "
                      "on); none of them may be an evaluation well.", flag_values=flag_values)
    flags.DEFINE_string("val_region", None, "Hold out this rectangle r0:r1,c0:c1 of every well for validation "
                        "(with --eval_region); it must overlap neither --region nor --eval_region.",
                        flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --output_dir.", flag_values=flag_values)
    flags.DEFINE_string("preset", "paper", "Preset whose channel vocabulary is used.", flag_values=flag_values)
    flags.DEFINE_string("config", None, "JSON config file layered over the preset.", flag_values=flag_values)
    flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable).",
                              flag_values=flag_values)
    flags.DEFINE_enum("normalization", "none", ["none", "paper", "percentile"],
                      "Transmitted-light normalisation (see above); recorded in dataset.json.", flag_values=flag_values)
    flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.", flag_values=flag_values)
    flags.DEFINE_string("embed_with", None, "A frozen model folder with 256-bin heads (e.g. "
                        "checkpoints/condition_b_sample): store its core embedding of every example in the records, "
                        "the extra input of the hybrid U-Net (isl train --recipe=unet_regression "
                        "--set=model.hybrid_features=<that folder>). Costs about 250 s per 1024 x 768 well on 2 "
                        "cores and 128 bytes per pixel on disk.", flag_values=flag_values)
    from isl.cli import data_flags

    data_flags.define(flag_values, ("channel_map",))


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import presets
    from isl import errors
    from isl import progress as progress_lib
    from isl.data import channel_map as channel_map_lib
    from isl.data import convert as convert_lib

    if positional:
        raise errors.InputError(f"unexpected arguments {positional}; use --input_dir=DIR.")
    input_dirs = list(flag_values["input_dir"].value or [])
    output_dir = flag_values["output_dir"].value
    if not input_dirs:
        raise errors.InputError("--input_dir is required (repeat it for several folders).")
    if not output_dir:
        raise errors.InputError("--output_dir is required.")
    config = presets.resolve_config(
        flag_values["preset"].value, flag_values["config"].value, list(flag_values["set"].value or [])
    )
    normalization = (flag_values["normalization"].value if flag_values["normalization"].present
                     else config.data.normalization)
    embed = embed_info = None
    embed_seconds = [0.0]
    if flag_values["embed_with"].value:
        import time

        from isl.infer import hybrid

        embedder, embed_info = hybrid.open_frozen(flag_values["embed_with"].value, owner="--embed_with")
        if embed_info["normalization"] != normalization:
            raise errors.InputError(
                f"--embed_with={flag_values['embed_with'].value}: that network reads its input with "
                f"normalization {embed_info['normalization']!r}, the records are written with {normalization!r} "
                "(--normalization); the hybrid feeds both the same stack, so they must match.")

        def embed(stack: Any, window: tuple[int, int, int, int]) -> Any:
            start = time.perf_counter()
            embedding = hybrid.window_embedding(embedder, stack, window)
            embed_seconds[0] += time.perf_counter() - start
            return embedding

    bar = progress_lib.Progress(None, "convert", enabled=flag_values["progress"].value)

    def report(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.update(1, postfix=name)

    result = convert_lib.convert(
        input_dirs,
        output_dir,
        config.channels,
        num_shards=flag_values["num_shards"].value,
        eval_every=flag_values["eval_every"].value,
        eval_wells=list(flag_values["eval_wells"].value or []),
        num_eval_shards=flag_values["num_eval_shards"].value,
        overwrite=flag_values["overwrite"].value,
        progress=report,
        region=flag_values["region"].value,
        eval_region=flag_values["eval_region"].value,
        val_wells=list(flag_values["val_wells"].value or []),
        val_region=flag_values["val_region"].value,
        # --set data.normalization=... (or a --config) counts like the flag; the flag wins.
        normalization=normalization,
        channel_map=channel_map_lib.check(flag_values["channel_map"].value or config.data.channel_map,
                                          config.channels),
        embed=embed,
        embed_info=embed_info,
    )
    bar.close()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    description = result.description
    for path, reason in result.skipped[:10]:
        print(f"skipped {os.path.basename(path)}: {reason}", file=sys.stderr)
    if len(result.skipped) > 10:
        print(f"skipped {len(result.skipped) - 10} more files (listed in dataset.json)", file=sys.stderr)
    print(
        f"Converted {len({well['name'] for well in description['wells']})} well(s) into "
        f"{result.num_examples['train']} train, {result.num_examples['val']} validation and "
        f"{result.num_examples['eval']} eval example(s); "
        f"z counts {description['z_counts']}, image sizes {description['image_sizes']}, "
        f"targets {', '.join(description['channels']['target_channels']) or 'none'}."
    )
    for split in ("train", "val", "eval"):
        if result.shards[split]:
            print(f"{split}: {len(result.shards[split])} shard(s) in {result.output_dir}")
    if flag_values["eval_region"].value:
        cropped = f"; training examples cropped to {flag_values['region'].value}" if flag_values["region"].value else ""
        print(f"Held out rows,columns {flag_values['eval_region'].value} of every well for evaluation{cropped}.")
        if flag_values["val_region"].value:
            print(f"Held out rows,columns {flag_values['val_region'].value} of every well for validation.")
    elif not result.num_examples["eval"]:
        print("No well was held out for evaluation (fewer wells than --eval_every, or --eval_every=0); "
              "use --eval_wells to name some.")
    if not result.num_examples["val"]:
        print("No validation split (--val_wells / --val_region): train.keep_best will keep the last weights.")
    if embed is not None:
        print(f"Embedded every example with {embed_info['model_dir']} ({embed_info['size']} features per pixel, "
              f"float16) in {embed_seconds[0]:.1f} s.")
    print(f"Wrote {result.dataset_json}")
    return {
        "output_dir": result.output_dir,
        "dataset_json": result.dataset_json,
        "shards": result.shards,
        "num_examples": result.num_examples,
        "num_skipped_files": len(result.skipped),
        "z_counts": description["z_counts"],
        "image_sizes": description["image_sizes"],
        "normalization": description["normalization"],
        "channel_map": description["channel_map"],
        "warnings": result.warnings,
    }
