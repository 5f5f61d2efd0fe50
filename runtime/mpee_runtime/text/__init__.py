"""Text in: the one strict reader of TSV / CSV / JSONL files with the input limit (readers), the truncation
rule (truncation) and the bundle's tokenizer with both (encoder). Imports bundle; never core, bench or serve."""
