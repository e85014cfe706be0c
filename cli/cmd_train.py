"""``fsiad train regad``: meta-train RegAD's registration network with the target held out."""

from __future__ import annotations

import sys

import click


def _names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter("expected comma-separated names")
    return names


@click.group("train")
def train_group() -> None:
    """Train the learned parts of a method (RegAD: STNs + Siamese heads) on other categories."""


@train_group.command("regad")
@click.option("--dataset", default="mvtec", show_default=True, help="Dataset kind of --root (mvtec, visa, ...).")
@click.option("--root", default=None, type=click.Path(file_okay=False),
              help="Dataset folder; its categories' train/good images are the training data.")
@click.option("--categories", default=None, help="Comma-separated training categories (default: all of --root).")
@click.option("--exclude", default=None, help="Comma-separated held-out categories (the target); never read.")
@click.option("--synthetic", type=click.IntRange(min=0), default=0, show_default=True,
              help="Synthetic categories (fsiad.fewshot.data.synthetic) mixed into the training data.")
@click.option("--images-per-category", type=click.IntRange(min=2), default=48, show_default=True,
              help="Normal images used per category.")
@click.option("--encoder", default="tf_efficientnet_lite0", show_default=True, help="Frozen encoder.")
@click.option("--layers", default=None, help="Encoder layers (default: strides 4, 8, 16).")
@click.option("--image-size", type=click.IntRange(min=16), default=224, show_default=True)
@click.option("--stn-mode", type=click.Choice(["rotation_scale", "rotation", "translation",
                                               "rotation_translation", "affine"]),
              default="rotation", show_default=True,
              help="STN parametrisation (paper: rotation_scale, which collapses to a zoom on frozen features).")
@click.option("--shots", type=click.IntRange(min=1), default=4, show_default=True, help="Supports per query (K).")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="SGD learning rate (momentum 0.9, cosine decay).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share of each TRAINING category kept for the validation loss (reported, not used to select).")
@click.option("--tune-encoder", is_flag=True,
              help="The paper's STN-encoder: fine-tune the CNN stages from the first feature layer on, "
                   "each STN's output feeding the next stage (default: frozen encoder, STNs on its features).")
@click.option("--encoder-lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="SGD learning rate of the fine-tuned stages (with --tune-encoder; paper: 1e-4).")
@click.option("--augment-pairs", is_flag=True,
              help="A random pose for every training image (not in the paper): its cached features are "
                   "warped, or with --tune-encoder the image itself, with a random exposure too.")
@click.option("--identity-prior", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of a penalty on the batch-mean STN transform (a turn common to every image "
                   "registers nothing); 0 = the paper's loss.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint file (*.safetensors); metadata and the loss curve go to the .json next to it.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same settings.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--allow-random", is_flag=True, hidden=True, help="Random-init encoder (tests only).")
def train_regad_command(dataset: str, root: str | None, categories: str | None, exclude: str | None,
                        synthetic: int, images_per_category: int, encoder: str, layers: str | None,
                        image_size: int, stn_mode: str, shots: int, epochs: int, batch_size: int, lr: float,
                        val_fraction: float, tune_encoder: bool, encoder_lr: float, augment_pairs: bool,
                        identity_prior: float, seed: int, device: str,
                        out: str, resume: bool, overwrite: bool, quiet: bool, allow_random: bool) -> None:
    """Meta-train RegAD on other categories (the target held out with --exclude); writes OUT + OUT.json.

    \b
    Example (magnetic_tile is the target):
      fsiad train regad --root data/mvtec --exclude magnetic_tile --synthetic 16 --out runs/regad.safetensors
    """
    from fsiad.fewshot.device import resolve_device
    from fsiad.fewshot.methods.options import Option
    from fsiad.fewshot.methods.regad_train import TrainConfig, sidecar, train_regad

    parsed_layers = Option("layers", "layers", None, nullable=True).coerce(layers, "train regad") if layers else None
    cfg = TrainConfig(out=out, dataset=dataset, root=root, categories=_names(categories),
                      exclude=_names(exclude) or [], synthetic=synthetic, images_per_category=images_per_category,
                      encoder=encoder, layers=parsed_layers, image_size=image_size, stn_mode=stn_mode, shots=shots,
                      epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction, seed=seed,
                      tune_encoder=tune_encoder, encoder_lr=encoder_lr, augment_pairs=augment_pairs,
                      identity_prior=identity_prior,
                      device=resolve_device(device), allow_random=allow_random)
    meta = train_regad(cfg, progress=not quiet and sys.stderr is not None, resume=resume, overwrite=overwrite,
                       log=lambda line: click.echo(line, err=True))
    last = meta["curve"][-1] if meta["curve"] else {}
    cats = meta["training"]["categories"]
    click.echo(f"trained {meta['epochs_done']} epochs on {len(cats)} categories ({sum(cats.values())} images), "
               f"held out: {', '.join(meta['training']['held_out']) or 'none'}; final loss {last.get('loss', float('nan')):.4f}")
    click.echo(f"checkpoint: {out} (metadata and loss curve: {sidecar(out)})")
    click.echo(f"use it: fsiad eval --method regad --weights {out} ...")
