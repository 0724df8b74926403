from fairkv_hf.models import load_model
