"""Retrieval: a FAISS index of ITC embeddings, two-stage search re-ranked by ITM, and R@K evaluation.

Example:
    >>> from vlptm.retrieval import EmbeddingIndex
    >>> import numpy as np
    >>> index = EmbeddingIndex(8, "Flat")
    >>> index.add(["img1"], np.ones((1, 8), np.float32) / np.sqrt(8))
    >>> index.search(np.ones((1, 8), np.float32) / np.sqrt(8), k=1)[1]
    [['img1']]
"""
from vlptm.retrieval.evaluate import (MODES, EvalSet, evaluate_retrieval, exhaustive_itm, format_results,
                                      recalls_from_ranks)
from vlptm.retrieval.index import (EmbeddingIndex, IndexFormatError, IndexMismatchError, IndexTrainingError,
                                   RetrievalIndexError, read_index_manifest)
from vlptm.retrieval.model import Regions, RetrievalModel, RetrievalModelError, itc_score_matrix
from vlptm.retrieval.search import QueryBatcher, Searcher, SearchHit, combine_scores

__all__ = [
    "MODES", "EvalSet", "evaluate_retrieval", "exhaustive_itm", "format_results", "recalls_from_ranks",
    "EmbeddingIndex", "IndexFormatError", "IndexMismatchError", "IndexTrainingError", "RetrievalIndexError",
    "read_index_manifest", "Regions", "RetrievalModel", "RetrievalModelError", "itc_score_matrix", "QueryBatcher",
    "Searcher", "SearchHit", "combine_scores",
]
