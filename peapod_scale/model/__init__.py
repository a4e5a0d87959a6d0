"""The PeaPOD model: personalised soft prompts in front of a T5 encoder-decoder."""
