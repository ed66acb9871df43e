"""The three arms every turn compares, in the order the page shows them: the base model (pretrained only), the SFT
model (instruction-tuned) and the preference-tuned model (SFT + the serving adapter). Generation answers with
them, the store records which one wrote each answer, the faces title them."""

ARMS = ("base", "sft", "pref")
ARM_TITLES = {"base": "Base", "sft": "SFT", "pref": "Preference-tuned"}
