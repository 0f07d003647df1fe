"""loraclf: fine-tune pretrained encoders with PEFT adapters for text classification, under a parameter budget."""

__version__ = "0.1.0"
