"""Export: the gate's accepted samples in the formats trainers read (Parquet, image folders), manifest and card."""
