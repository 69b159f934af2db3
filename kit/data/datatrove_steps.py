"""The kit's cleaning, filters and dedup settings as datatrove pipeline steps (optional ``data`` extra).

Past one machine, run the kit's rules on datatrove's executors (local, Slurm, Ray) instead of a home-made
scheduler: :class:`KitCleaner` and :class:`KitFilter` are ordinary datatrove steps, so any
``LocalPipelineExecutor`` / ``SlurmPipelineExecutor`` / ``RayPipelineExecutor`` runs them over thousands of
tasks, and :func:`kit_minhash_config` gives datatrove's four-stage MinHash the kit's shingles and bands.
:class:`KitMinhashSignature` is that MinHash's first stage with the kit's normalisation, shingles and
signatures (a batch of documents per vectorised pass), writing datatrove's own signature files, so its
bucket, cluster and filter stages run unchanged after it.

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
    # then datatrove's MinhashDedupSignature/Buckets/Cluster/Filter with config=kit_minhash_config(), or
    # KitMinhashSignature("sigs/") then MinhashDedupBuckets/Cluster/Filter with
    # config=kit_minhash_config(precision=32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

try:
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.pipeline.formatters.base import BaseFormatter
except ImportError:  # the module still imports (the layout test imports every module); using a step says why

    class _NeedsDatatrove:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError(
                f"{type(self).__name__} needs datatrove: pip install 'lightning-kit[data]' (datatrove, orjson)"
            )

    BaseFilter = BaseFormatter = PipelineStep = _NeedsDatatrove  # type: ignore[misc,assignment]

from kit.data.dedup import fingerprint
from kit.data.filters import DocFilter, FilterChain, default_filters
from kit.data.minhash import MinHasher
from kit.data.text import clean_text

__all__ = ["KitCleaner", "KitFilter", "KitMinhashSignature", "kit_minhash_config"]


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


def kit_minhash_config(ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1, precision: int = 64):
    """datatrove ``MinhashConfig`` with the kit's defaults: word 5-grams, 14 bands x 8 rows (threshold ~0.72).

    Args:
        precision: bits per stored hash; ``32`` for :class:`KitMinhashSignature` (the kit's signatures are
            32-bit), ``64`` for datatrove's own signature stage.

    Example:
        >>> cfg = kit_minhash_config(precision=32)  # doctest: +SKIP
        >>> cfg.num_buckets, cfg.hashes_per_bucket, cfg.hash_config.precision  # doctest: +SKIP
        (14, 8, 32)
    """
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig

    return MinhashConfig(
        n_grams=ngram,
        num_buckets=bands,
        hashes_per_bucket=rows,
        seed=seed,
        hash_config=HashConfig(precision=precision),
    )


class KitMinhashSignature(PipelineStep):
    """Stage one of datatrove's MinHash dedup with the kit's normalisation, shingles and signatures.

    Writes what datatrove's ``MinhashDedupSignature`` writes (per band, one sorted file of
    ``rows`` 32-bit hashes and the document's index per document), so ``MinhashDedupBuckets``,
    ``MinhashDedupCluster`` and ``MinhashDedupFilter`` follow unchanged with the same config. The signatures
    are :class:`kit.data.minhash.MinHasher`'s, ``batch_size`` documents per vectorised pass, so the bands
    are those of ``kit data clean`` (which also verifies candidates; datatrove's stages do not).

    Args:
        output_folder: where the signature files go (any datatrove ``DataFolderLike``).
        config: a ``kit_minhash_config(precision=32)``; default: that one.
        batch_size: documents per MinHash batch.

    Raises:
        ValueError: ``config`` stores 64-bit hashes, or ``batch_size < 1``.

    Example:
        >>> step = KitMinhashSignature("sigs/")  # doctest: +SKIP
        >>> step.config.hash_config.precision  # doctest: +SKIP
        32
    """

    type = "🫂 - DEDUP"
    name = "🎯 MinHash stage 1 (kit signatures)"

    def __init__(self, output_folder: Any, config: Any = None, batch_size: int = 256) -> None:
        from datatrove.io import get_datafolder

        super().__init__()
        self.config = config if config is not None else kit_minhash_config(precision=32)
        if self.config.hash_config.precision != 32:
            raise ValueError(
                f"KitMinhashSignature writes 32-bit hashes, the config has precision="
                f"{self.config.hash_config.precision}; pass kit_minhash_config(precision=32) here and to the "
                "later stages"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.output_folder = get_datafolder(output_folder)
        self.batch_size = batch_size
        cfg = self.config
        self.hasher = MinHasher(cfg.n_grams, cfg.num_buckets * cfg.hashes_per_bucket, cfg.seed)
        fields = [(f"field{i + 1}", "<u4") for i in range(cfg.hashes_per_bucket + 1)]  # rows, then the index
        self._record = np.dtype(fields)

    def _path(self, band: int, rank: int) -> str:
        return f"bucket_{band:03d}/{rank:05d}.minhash.sig"

    def _write(self, files: list, batch: list[bytes], first: int) -> None:
        rows = self.config.hashes_per_bucket
        sigs = self.hasher.signatures(batch)  # (docs, bands * rows)
        records = np.empty(len(batch), dtype=self._record)
        records[f"field{rows + 1}"] = np.arange(first, first + len(batch), dtype=np.uint32)
        for band, f in enumerate(files):
            for r in range(rows):
                records[f"field{r + 1}"] = sigs[:, band * rows + r]
            f.write(records.tobytes())

    def run(self, data: Any, rank: int = 0, world_size: int = 1) -> Any:
        """Write the signatures of ``data`` (documents numbered from 0 in this rank), then sort each file."""
        files = [
            self.output_folder.open(self._path(b, rank), mode="wb") for b in range(self.config.num_buckets)
        ]
        count, batch = 0, []
        with self.track_time(unit="batch"):
            for doc in data or ():
                self.stat_update("total")
                batch.append(fingerprint(doc.text)[0])
                if len(batch) == self.batch_size:
                    self._write(files, batch, count)
                    count, batch = count + len(batch), []
            if batch:
                self._write(files, batch, count)
            for f in files:
                f.close()
            for band in range(self.config.num_buckets):  # sorted by hashes, as the bucket stage reads them
                with self.output_folder.open(self._path(band, rank), mode="rb") as f:
                    records = np.frombuffer(f.read(), dtype=self._record).copy()
                records.sort(order=list(self._record.names))
                with self.output_folder.open(self._path(band, rank), mode="wb") as f:
                    f.write(records.tobytes())
