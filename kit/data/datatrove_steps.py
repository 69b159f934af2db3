"""The kit's cleaning, filters and dedup settings as datatrove pipeline steps (optional ``data`` extra).

Past one machine, run the kit's rules on datatrove's executors (local, Slurm, Ray) instead of a home-made
scheduler: :class:`KitCleaner` and :class:`KitFilter` are ordinary datatrove steps, so any
``LocalPipelineExecutor`` / ``SlurmPipelineExecutor`` / ``RayPipelineExecutor`` runs them over thousands of
tasks, and :func:`kit_minhash_config` gives datatrove's four-stage MinHash the kit's shingles and bands.

Where the results differ from ``kit data clean``: datatrove's MinHash removes all but one document of each
connected cluster of LSH pairs and does not verify candidates by estimated similarity, while the kit keeps
a document unless an earlier *kept* document verifies as similar (so a chain A~B~C with A and C dissimilar
keeps A and C in the kit, only A in datatrove). Its shingles come from its own word tokenizer and hash.

Example (1 TB on Slurm, the kit's rules in stage one)::

    from datatrove.executor import SlurmPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from kit.data.datatrove_steps import KitCleaner, KitFilter

    SlurmPipelineExecutor(
        pipeline=[JsonlReader("s3://raw/"), KitCleaner(), KitFilter(), JsonlWriter("s3://filtered/")],
        tasks=4000, time="10:00:00", partition="cpu", logging_dir="logs/filter",
    ).run()
    # then datatrove's MinhashDedupSignature/Buckets/Cluster/Filter with config=kit_minhash_config()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.pipeline.formatters.base import BaseFormatter
except ImportError:  # the module still imports (the layout test imports every module); using a step says why

    class _NeedsDatatrove:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError(
                f"{type(self).__name__} needs datatrove: pip install 'lightning-kit[data]' (datatrove, orjson)"
            )

    BaseFilter = BaseFormatter = _NeedsDatatrove  # type: ignore[misc,assignment]

from kit.data.filters import DocFilter, FilterChain, default_filters
from kit.data.text import clean_text

__all__ = ["KitCleaner", "KitFilter", "kit_minhash_config"]


class KitCleaner(BaseFormatter):
    """``kit.data.text.clean_text`` as a datatrove formatter step.

    Args:
        lowercase: passed to ``clean_text``.
        clean: any ``str -> str`` callable instead of ``clean_text`` (must pickle for multi-process runs).
    """

    name = "kit clean_text"

    def __init__(self, lowercase: bool = False, clean: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.lowercase = lowercase
        self.clean = clean

    def format(self, text: str) -> str:
        return self.clean(text) if self.clean is not None else clean_text(text, lowercase=self.lowercase)


class KitFilter(BaseFilter):
    """Any kit ``DocFilter`` (default: length + Gopher quality + Gopher repetition) as a datatrove filter.

    Removed documents carry the kit's reason (``"gopher_quality:stop_words"``) in datatrove's stats and,
    with an ``exclusion_writer``, in ``doc.metadata["filter_reason"]``; empty documents are removed as
    ``clean:empty``, as in ``DataPipeline``.

    Args:
        doc_filter: a ``DocFilter`` or a list of filters / ``keep(text)`` callables; ``None`` for the default.
        exclusion_writer: a datatrove writer for the removed documents.
    """

    name = "kit filters"

    def __init__(self, doc_filter: DocFilter | list | None = None, exclusion_writer=None) -> None:
        super().__init__(exclusion_writer)
        if doc_filter is None:
            doc_filter = default_filters()
        elif not isinstance(doc_filter, DocFilter):
            doc_filter = FilterChain(doc_filter)
        self.doc_filter = doc_filter

    def filter(self, doc: Any) -> bool | tuple[bool, str]:  # a datatrove Document
        if not doc.text.strip():
            return False, "clean:empty"
        why = self.doc_filter.reason(doc.text)
        return True if why is None else (False, why)


def kit_minhash_config(ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1):
    """datatrove ``MinhashConfig`` with the kit's defaults: word 5-grams, 14 bands x 8 rows (threshold ~0.72)."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    return MinhashConfig(n_grams=ngram, num_buckets=bands, hashes_per_bucket=rows, seed=seed)
