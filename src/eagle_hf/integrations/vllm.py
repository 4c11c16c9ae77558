"""vLLM plugin: serve eagle-hf folders with vLLM's Transformers modeling backend.

vLLM (0.33) loads the functions of the ``vllm.general_plugins`` entry-point group in every process
it starts; :func:`register` (named there in eagle-hf's setup.cfg) imports eagle-hf, which registers
the configs, models and processors with transformers' Auto classes, and maps eagle-hf's
architectures to ``TransformersMultiModalForCausalLM``. That backend then builds
``AutoModel.from_config(config)`` (the head-less `EagleVLModel`), runs ``get_image_features``
for each image and calls the model with ``inputs_embeds`` and ``position_ids`` for one flattened
row of all scheduled requests, ``use_cache=False, return_dict=False``; it asks the processor for
``return_text_replacement_offsets=True`` to find each image's placeholder
(``vllm/model_executor/models/transformers/{base,multimodal}.py``). Remote-code exports carry
``AutoModel`` in their ``auto_map`` for the same backend without this plugin.
"""

ARCHITECTURES = ("EagleVLForConditionalGeneration", "EagleLlamaForCausalLM")
BACKEND_CLASS = "vllm.model_executor.models.transformers:TransformersMultiModalForCausalLM"


def register() -> None:
    import eagle_hf  # noqa: F401  (registers the Auto classes in this vLLM process)
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    for architecture in ARCHITECTURES:
        if architecture not in supported:
            ModelRegistry.register_model(architecture, BACKEND_CLASS)
