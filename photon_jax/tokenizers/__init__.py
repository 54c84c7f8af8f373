"""Tokenizers: SentencePiece (trained by `prepare` or given) and Hugging Face tokenizer.json, one
interface (tokenizer_base.Tokenizer), exact UTF-8 byte lengths per token for bits per byte
(hf_byte_lengths), and the tokenizer.json export of a SentencePiece model (tokenizer_json).
`tokenizer.load_tokenizer(path)` picks the class from the file."""
