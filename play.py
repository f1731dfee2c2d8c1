"""Play a world model: `python play.py` (see README.md, "Play").

Arguments -> engine + input source + pygame window -> loop. Until a trained model ships
inside the package, this says so and how to get one.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python play.py", description="Play a dsa-sim world model.")
    p.add_argument("--scene", default="maze", help="scene whose model to play (default: maze)")
    p.add_argument("--checkpoint", default=None, help="a world checkpoint folder (default: the shipped one)")
    args = p.parse_args(argv)
    from sim.bundle import shipped_checkpoint
    ckpt = args.checkpoint or shipped_checkpoint(args.scene)
    if ckpt is None:
        print(f"dsa-sim: no trained model is shipped yet for scene {args.scene!r}. "
              "Train one with `python -m sim.train` (README.md, 'Train'); the interactive player arrives with it.",
              file=sys.stderr)
        return 1
    print(f"dsa-sim: found checkpoint {ckpt}, but this version has no interactive player yet "
          "(it is the next piece of work); use `python -m sim.eval --checkpoint ...` to measure it.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
