"""Target-model loading, prompt formats, residual hooks, extraction and steered generation."""
