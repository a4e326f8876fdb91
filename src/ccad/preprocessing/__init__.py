"""Layer 4, preprocessing: the input pipeline from a read image to what the model sees.

The preprocessing steps (:mod:`~ccad.preprocessing.steps`) and the pipeline that runs them
(:mod:`~ccad.preprocessing.pipeline`, lung fields from :mod:`ccad.models.lungs`), augmentation, the ``tf.data``
batches for Keras, the augmentation preview. May import :mod:`ccad.models`, :mod:`ccad.data`, :mod:`ccad.io`.
"""
