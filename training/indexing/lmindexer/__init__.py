"""LMIndexer: self-supervised semantic IDs, learned level by level (lmindexer-method.md).

The schedule, for every learned level t = 0 .. L-1 (earlier codes teacher-forced: their input
vectors are the codebook rows E^j[c_j] of the codes already assigned):

1. reconstructor warm-up (level 0 only): encoder, ID decoder and a random codebook frozen, the
   reconstructor alone learns to read ID vectors and hints (hint masking p = 0), so that it is
   not a random function when the indexer starts to learn (reconstructor collapse);
2. "nocode": the continuous h^t is the ID vector. L_recon (hint masking p_t) + L_contrastive
   (+ L_commitment from level 1 on). This is where most of the structure is learned;
3. k-means on h^t of all documents initialises E^t. Codes are argmax h . e (a dot product) while
   k-means is an L2 method; with `kmeans_normalize` (the default) k-means runs on unit-length h
   and the centroids are rescaled to one common norm (the mean |h|), so argmax h . e equals the
   nearest centroid in cosine: the assignment rule and the clustering agree;
4. full training: the straight-through quantised vector (quantizer.py) replaces h^t as the ID
   vector. L_recon + L_contrastive + L_commitment; E^t is trained, earlier codebooks are frozen;
5. assignment: c_t = argmax_j h^t . e^t_j for every document (eval mode, no dropout).

Losses (losses.py): L_recon = CE over the (sampled) real tokens through the reconstructor
(reconstructor.py); L_contrastive = in-batch SimCSE on two dropout views of h^t at level 0,
same-prefix negatives from level 1 on (batches are packed with groups of documents that share
the earlier codes; `in_batch_negatives` adds the rest of the batch); L_commitment = CE of the
network's level logits for the earlier levels against the assigned codes.

Compute. The encoder may be trained whole (`train_encoder_layers = -1`, the paper setting), not at
all (0) or only in its top n layers (n > 0, BERT-like encoders). Frozen layers are run once over
the corpus and their outputs cached in memory (and on disk, `$LMINDEXER_CACHE_DIR/encoder_states`),
which is what makes the CPU presets feasible. The reconstructor may score only a sampled fraction
of the target tokens (`recon_target_fraction`) over the tokens the corpus uses (`recon_vocab`).

The package, by role: `config` (LMIndexerConfig), `encoder_states` (the tokenized corpus and the
cached frozen part of the encoder), `model` (network + reconstructor and a stage's loss) and
`schedule` (the stages, k-means, assignment, outputs; each stage trained by training.loop).
"""

from training.indexing.lmindexer.config import LMIndexerConfig
from training.indexing.lmindexer.schedule import LMIndexer, learn_lmindexer_codes

__all__ = ["LMIndexer", "LMIndexerConfig", "learn_lmindexer_codes"]
