"""Data: sources -> columns -> label map -> split -> tokenize -> batches, one module per stage.

read      the one table reader (files through pandas, Arrow or a stream; hub datasets)
clean     the one cleaning path (text columns joined, empty rows dropped or refused, long texts cut)
labels    the label map and label encoding (classes)
targets   label sets (multi-label) and numbers (regression), and the label map and encoding by problem type
splits    train/validation/test with the label map (load_splits; load_stream_splits with data.streaming)
batches   tokenize (cached as Arrow), padding, the length-grouped order, the loaders
stream    one pass over a training stream, tokenized as it is read (data.streaming)
"""

from .batches import (EVAL_COLUMNS, TRAIN_COLUMNS, LengthGroupedSampler, cache_dir, collator, eval_loader,
                      steps_per_epoch, tokenize, train_loader)
from .clean import (ID_COLUMNS, check_columns, pair_columns, clean_arrow, clean_batch, clean_frame, is_missing, join_text,
                    read_texts, select_text, text_columns)
from .labels import build_label_map, encode_arrow, encode_labels, normalise_label
from .read import (ARROW_BUILDERS, READERS, STREAM_BUILDERS, check_file, column, read_hub, read_split, read_table,
                   stream_head)
from .splits import Splits, load_splits, load_stream_splits, stratified_split, train_labels
from .stream import STREAM_MAP_BATCH, stream_loader, stream_where, train_stream
