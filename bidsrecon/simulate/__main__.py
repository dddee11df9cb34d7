"""``python -m bidsrecon.simulate OUT_DIR``: write a simulated ds001506-like BIDS dataset."""
import argparse
import sys

from bidsrecon.errors import BidsReconError
from bidsrecon.simulate.dataset import simulate_dataset
from bidsrecon.simulate.presets import PRESETS


def build_parser():
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m bidsrecon.simulate",
        description="Write a simulated BIDS dataset laid out like OpenNeuro ds001506.")
    parser.add_argument("out_dir", help="new or empty folder (a previous simulation there is replaced)")
    parser.add_argument("--subjects", type=int, default=1, help="number of subjects (default 1)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="dataset size (default tiny)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--fmriprep", action="store_true",
                        help="also write fMRIPrep-style derivatives in derivatives/fmriprep")
    parser.add_argument("--noise", type=float, default=None,
                        help="measurement-noise SD in percent signal (default: the preset's)")
    return parser


def main(argv=None):
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        root = simulate_dataset(args.out_dir, n_subjects=args.subjects, preset=args.preset,
                                seed=args.seed, fmriprep=args.fmriprep, noise=args.noise)
    except BidsReconError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"Simulated dataset written to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
