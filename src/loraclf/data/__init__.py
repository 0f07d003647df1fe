"""Data: sources -> columns -> label map -> split -> tokenize -> batches, one module per stage.

It owns reading, cleaning, label encoding, splitting, tokenizing and batching of every text, in training and in
prediction, and the EDA augmentation of training texts. It may import config, task, runs and base; never the model,
training, inference or anything above.

    read      the one table reader (files through pandas, Arrow or a stream; hub datasets)
    clean     the one cleaning path (text columns joined, empty rows dropped or refused, long texts cut)
    labels    the label map and label encoding (classes)
    targets   label sets (multi-label) and numbers (regression), and the label map and encoding by problem type
    splits    train/validation/test with the label map (load_splits; load_stream_splits with data.streaming)
    overlap   validation/test rows that repeat training rows after normalisation (the train-time leak warning)
    windows   texts as token ids per data.long_text: truncated, head + tail, or sliding windows
    batches   tokenize (cached as Arrow), padding, the length-grouped order, the loaders
    stream    one pass over a training stream, tokenized as it is read (data.streaming)
    augment   EDA copies of training texts (augment.*, `loraclf augment`)
    wordnet   WordNet and the stopwords, found and read offline, for augment's synonyms
"""

from .token_batches import TokenBatchSampler, token_batches
from .batches import (EVAL_COLUMNS, TRAIN_COLUMNS, LengthGroupedSampler, cache_dir, collator, eval_loader,
                      steps_per_epoch, token_sampler, tokenize, train_loader)
from .clean import (ID_COLUMNS, check_columns, pair_columns, clean_arrow, clean_batch, clean_frame, is_missing, join_text,
                    read_texts, select_text, text_columns)
from .labels import build_label_map, encode_arrow, encode_labels, normalise_label
from .read import (ARROW_BUILDERS, READERS, STREAM_BUILDERS, check_file, column, read_hub, read_split, read_table,
                   stream_head)
from .overlap import normalise, row_keys, warn_overlap
from .splits import Splits, hold_out_validation, load_splits, load_stream_splits, stratified_split, train_labels
from .stream import STREAM_MAP_BATCH, stream_loader, stream_where, train_stream
