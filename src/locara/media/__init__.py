"""Media inputs: audio decoded for speech models, images checked and decoded for OCR and vision."""
