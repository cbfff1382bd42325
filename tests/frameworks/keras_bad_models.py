"""Model factories that are wrong in the ways a user's can be (for test_keras.py)."""

import keras


def not_compiled(input_shape, outputs):
    return keras.Sequential([keras.Input(shape=input_shape), keras.layers.Dense(1, activation="sigmoid")])


def not_a_model():
    return {"layers": 2}


def three_outputs(input_shape, outputs):
    model = keras.Sequential([keras.Input(shape=input_shape), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model
