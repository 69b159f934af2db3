"""Argparse tools behind `kit data|plan|doctor|bench`; each module has ``main(argv) -> int``."""
