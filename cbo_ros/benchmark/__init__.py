"""The true-label benchmark: label sets (WordNet to ImageNet), composed labelled video, splits."""
