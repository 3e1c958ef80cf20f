#!/usr/bin/env python
"""Train the shipped Fashion-MNIST models (fmnist_vit12, fmnist_vit_tiny, fmnist_cnn) from scratch on CPU.

Checkpoints after every epoch (safetensors + JSON, atomic) and resumes from the last one, so training
can span interrupted sessions. The finished weights are exported to dcvit/models/weights/NAME.safetensors.

The shipped teacher took two phases (the full sequence, companions included, is in README.md, "The embedded
default"; the arguments of each run are recorded in dcvit/models/weights/NAME.json):
    python tools/train_teacher.py --model fmnist_vit12 --epochs 30 --batch-size 256 --lr 2e-3 --bf16 --threads 2
    mv dcvit/models/weights/fmnist_vit12.json dcvit/models/weights/fmnist_vit12.phase1.json
    python tools/train_teacher.py --model fmnist_vit12 --start-from-shipped --distill fmnist_vit12 fmnist_cnn \
        --tag=-kd --epochs 4 --batch-size 256 --lr 3e-4 --warmup-epochs 0.2 --bf16 --threads 2
(phase 1 was in fact started with --epochs 20, stopped after epoch 9 and resumed with --epochs 30.)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import dcvit  # noqa: F401  registers the models
from dcvit.data import DEBIAN_FMNIST, FashionMNIST, calibration_indices
from dcvit.models import FMNIST_MEAN, FMNIST_STD, weights_path
from dcvit.scripts import script_parser
from dcvit.storage import optimizer_tensors, read_json, read_tensors, restore_optimizer, write_json, write_tensors


def augment(images: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Batched random crop (zero padding `pad`) and horizontal flip of uint8 images B x 28 x 28."""
    b, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    out = padded[torch.arange(b)[:, None, None], rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None], out.flip(-1), out)


def normalize(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() / 255.0) - FMNIST_MEAN[0]).div(FMNIST_STD[0]).unsqueeze(1)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def evaluate(model, images, targets, batch_size=1000) -> float:
    model.eval()
    correct = sum(
        (model(normalize(images[i : i + batch_size])).argmax(1) == targets[i : i + batch_size]).sum().item()
        for i in range(0, len(targets), batch_size)
    )
    return correct / len(targets)


def save_checkpoint(ckpt: Path, model, optimizer, epoch: int, history: list) -> None:
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    write_tensors(
        ckpt / "state.safetensors", {**{f"model.{k}": v for k, v in model.state_dict().items()}, **opt_tensors}
    )
    write_json(ckpt / "state.json", {"epoch": epoch, "optimizer": opt_meta, "history": history})


def load_checkpoint(ckpt: Path, model, optimizer) -> tuple[int, list]:
    if not (ckpt / "state.json").is_file():
        return 0, []
    meta = read_json(ckpt / "state.json")
    tensors = read_tensors(ckpt / "state.safetensors")
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer(optimizer, tensors, meta["optimizer"])
    return meta["epoch"], meta["history"]


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--model", default="fmnist_vit12", choices=["fmnist_vit12", "fmnist_vit_tiny", "fmnist_cnn"])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast for the forward pass: worth it only on CPUs with AVX512-BF16 or AMX, much SLOWER "
        'without (docs/engineering.md, "bfloat16 training on CPU")',
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=str(DEBIAN_FMNIST), help="Fashion-MNIST root (idx files)")
    p.add_argument("--checkpoints", default="checkpoints", help="folder for per-epoch checkpoints")
    p.add_argument("--max-epochs-this-run", type=int, default=None, help="stop after this many epochs (resume later)")
    p.add_argument(
        "--start-from-shipped", action="store_true", help="initialise from the shipped weights (a second phase)"
    )
    p.add_argument(
        "--distill",
        nargs="+",
        default=[],
        metavar="NAME",
        help="shipped models whose averaged softmax (temperature 2) is a soft target, weight --kd-weight",
    )
    p.add_argument("--kd-weight", type=float, default=0.5)
    p.add_argument("--tag", default="", help="checkpoint folder suffix, e.g. -kd for a second phase")
    p.add_argument(
        "--exclude-calibration",
        type=int,
        default=0,
        metavar="N",
        help="leave out the N-image calibration split (dcvit.data.calibration_indices, seed 0) so cascade "
        "calibration sees images the model never trained on",
    )
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, test = FashionMNIST(args.data, train=True), FashionMNIST(args.data, train=False)
    if args.exclude_calibration:
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[calibration_indices(len(train), args.exclude_calibration, seed=0)] = False
        train.images, train.targets = train.images[keep], train.targets[keep]
    model = timm.create_model(args.model, pretrained=args.start_from_shipped)
    teachers = [timm.create_model(name, pretrained=True).eval().requires_grad_(False) for name in args.distill]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    ckpt = Path(args.checkpoints) / (args.model + args.tag)
    start, history = load_checkpoint(ckpt, model, optimizer)
    if start:
        print(f"resumed {args.model} after epoch {start}")

    steps_per_epoch = len(train) // args.batch_size
    total, warmup = args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch)
    stop = args.epochs if args.max_epochs_this_run is None else min(args.epochs, start + args.max_epochs_this_run)
    for epoch in range(start, stop):
        # One generator per epoch, seeded from (seed, epoch): a resumed run sees the same batches.
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(len(train), generator=gen)
        model.train()
        t0, running = time.time(), 0.0
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, args.lr)
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            x = normalize(augment(train.images[idx], gen))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), train.targets[idx], label_smoothing=args.label_smoothing)
            if teachers:  # knowledge distillation from the averaged soft predictions of frozen models
                with torch.no_grad():
                    soft = torch.stack([t(x).float().div(2.0).softmax(1) for t in teachers]).mean(0)
                kd = F.kl_div(F.log_softmax(logits.float() / 2.0, 1), soft, reduction="batchmean") * 4.0
                loss = (1 - args.kd_weight) * loss + args.kd_weight * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            running += loss.item()
        acc = evaluate(model, test.images, test.targets)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": running / steps_per_epoch,
                "test_top1": acc,
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(json.dumps(history[-1]), flush=True)
        save_checkpoint(ckpt, model, optimizer, epoch + 1, history)

    if stop == args.epochs:
        write_tensors(weights_path(args.model), model.state_dict())
        write_json(
            weights_path(args.model).with_suffix(".json"), {"model": args.model, "args": vars(args), "history": history}
        )
        print(f"exported {weights_path(args.model)}")


if __name__ == "__main__":
    main()
