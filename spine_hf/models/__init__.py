"""What a saved model is and what travels with it: the backbone and its head, the pixels it expects, the
saved folder (timm and transformers), its model card, grade ranges and referral files."""
