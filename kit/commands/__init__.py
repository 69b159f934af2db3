"""Argparse tools behind `kit data|plan|doctor`; each module has ``main(argv) -> int``."""
