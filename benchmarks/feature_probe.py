"""Which EfficientNet-Lite0 map still knows an object's colour? Linear probes per layer on synthetic scenes.

    python benchmarks/feature_probe.py [--train-scenes 800] [--test-scenes 200]

For every object of a scene the probe reads the 7 x 7 patch under the object's centre (maps finer than 7 x 7
are average-pooled to it) and a multinomial logistic regression predicts the object's colour and its shape.
Trained on `train`-split scenes, scored on held-out `test`-split scenes (runtime.scenes). This is the
measurement behind smol-llava's projector input (calib.models.efficientnet): the head map alone loses hue.
About 2.5 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch
import torch.nn.functional as F

BLOCKS = (2, 4, 7, 10, 14, 15)  # the last block of stages 2-7


def fit_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
              classes: int, weight_decay: float = 1e-3) -> float:
    """Test accuracy of an L2-regularised logistic regression on standardised features (L-BFGS)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-3
    xtr, xte = (x_train - mu) / sd, (x_test - mu) / sd
    w = torch.zeros(xtr.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, y_train) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == y_test).float().mean())


def object_patches(split: str, n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Per object of `n` scenes: the patch vector of every probed map, its colour and its shape labels."""
    from calib.models import efficientnet
    from runtime import scenes
    from runtime.preprocess import preprocess

    tower = efficientnet.build_tower()
    tower.load_state_dict(efficientnet.pretrained_state())
    tower.eval()
    seen: dict[int, torch.Tensor] = {}
    hooks = [tower._blocks[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)) for i in BLOCKS]
    colours, shapes = list(scenes.COLOURS), list(scenes.SHAPES)
    vectors: dict[str, list[torch.Tensor]] = {}
    labels: list[tuple[int, int]] = []
    items = list(scenes.scenes(split, n))
    cell = scenes.SIZE / efficientnet.GRID
    with torch.no_grad():
        for start in range(0, len(items), 32):
            chunk = items[start:start + 32]
            feats = efficientnet.features(tower, torch.from_numpy(preprocess([s.image for s in chunk],
                                                                             efficientnet.IMAGE_SPEC)))
            maps = {f"block {i} ({seen[i].shape[1]} ch, {seen[i].shape[2]}x{seen[i].shape[3]})":
                    F.adaptive_avg_pool2d(seen[i], efficientnet.GRID).flatten(2).transpose(1, 2) for i in BLOCKS}
            maps["head (1280 ch, 7x7)"] = feats[..., :efficientnet.HEAD_DIM]
            maps["projector input: head + block 7"] = feats
            for j, s in enumerate(chunk):
                for o in s.objects:
                    last = efficientnet.GRID - 1
                    patch = min(last, int(o.y / cell)) * efficientnet.GRID + min(last, int(o.x / cell))
                    for name, m in maps.items():
                        vectors.setdefault(name, []).append(m[j, patch])
                    labels.append((colours.index(o.colour), shapes.index(o.shape)))
    for h in hooks:
        h.remove()
    y = torch.tensor(labels)
    return {k: torch.stack(v) for k, v in vectors.items()}, y[:, 0], y[:, 1]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-scenes", type=int, default=800)
    p.add_argument("--test-scenes", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if min(args.train_scenes, args.test_scenes, args.threads) < 1:
        p.error("--train-scenes, --test-scenes and --threads must be >= 1")
    from runtime import scenes

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    train, ctr, str_ = object_patches("train", args.train_scenes)
    test, cte, ste = object_patches("test", args.test_scenes)
    print(f"objects: {len(ctr)} train, {len(cte)} test; chance: colour {1 / len(scenes.COLOURS):.1%}, "
          f"shape {1 / len(scenes.SHAPES):.1%}")
    print(f"| map | colour probe (test) | shape probe (test) |\n|---|---|---|")
    for name in train:
        colour = fit_probe(train[name], ctr, test[name], cte, len(scenes.COLOURS))
        shape = fit_probe(train[name], str_, test[name], ste, len(scenes.SHAPES))
        print(f"| {name} | {colour:.1%} | {shape:.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
