"""Release records of the models that run in other libraries (OpenCV DNN, MediaPipe, dlib).

These networks are defined by their files, not by torch modules here; their records sit with the
other architectures' so that every release faceetl knows is listed in one place
(:func:`faceetl.nets.list_weights`).
"""

from __future__ import annotations

from ..weights import register_weights

# OpenCV DNN res10 SSD
register_weights(
    "ssd_tf_uint8",
    "https://raw.githubusercontent.com/opencv/opencv_3rdparty/"
    "7b425df276ba2161b8edaab0f0756f4a735d61b9/opencv_face_detector_uint8.pb",
    "5c71d752ef2cbf2f457ac82fdd580fcb2522fd04c5efdaed18eb6d9e2843fbed",
    "opencv_face_detector_uint8.pb",
    "OpenCV res10 SSD face detector, TensorFlow uint8 graph",
)

register_weights(
    "ssd_tf_pbtxt",
    "https://raw.githubusercontent.com/supby/faced_test/"
    "63154424b9e5bd7e5dcbafd9079c4e298028d39f/opencv_face_detector.pbtxt",
    "5397808362fc6fb7c4044484848e297b22449d913a267fa7f8bd9d86dce29144",
    "opencv_face_detector.pbtxt",
    "Text graph for opencv_face_detector_uint8.pb (a revision of OpenCV's sample file)",
)

register_weights(
    "ssd_caffe_prototxt",
    "https://raw.githubusercontent.com/opencv/opencv/4.0.1/samples/dnn/face_detector/deploy.prototxt",
    "f62621cac923d6f37bd669298c428bb7ee72233b5f8c3389bb893e35ebbcf795",
    "deploy.prototxt",
    "OpenCV res10 SSD Caffe deploy prototxt",
)

register_weights(
    "ssd_caffe_model",
    "https://raw.githubusercontent.com/opencv/opencv_3rdparty/"
    "dnn_samples_face_detector_20170830/res10_300x300_ssd_iter_140000.caffemodel",
    # the hash pinned by several independent public projects for this official file (10,666,211 bytes)
    "2a56a11a57a4a295956b0660b4a3d76bbdca2206c4961cea8efe7d95c7cb2f2d",
    "res10_300x300_ssd_iter_140000.caffemodel",
    "OpenCV res10 SSD face detector, Caffe fp32 weights",
)

# MediaPipe BlazeFace (TFLite)
_SRC = (
    "https://raw.githubusercontent.com/google-ai-edge/mediapipe/"
    "63e679d99ca45b30514a9d84c9351a2d77bb9ba0/mediapipe/modules/face_detection/"
)

register_weights(
    "mediapipe_face_detection_short_range",
    _SRC + "face_detection_short_range.tflite",
    "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    "face_detection_short_range.tflite",
    "MediaPipe BlazeFace short range (faces within ~2 m), 128x128 input, no TFLite metadata",
)

register_weights(
    "mediapipe_face_detection_full_range_sparse",
    _SRC + "face_detection_full_range_sparse.tflite",
    "671dd2f9ed11a78436fc21cc42357a803dfc6f73e9fb86541be942d5716c2dce",
    "face_detection_full_range_sparse.tflite",
    "MediaPipe BlazeFace full range sparse (faces within ~5 m), 192x192 input, no TFLite metadata",
)

# dlib MMOD CNN
register_weights(
    "dlib_mmod_human_face_detector",
    "https://raw.githubusercontent.com/dchen236/FairFace/"
    "74b4f93e527f1fb2b27b2b425227c3ded0521830/dlib_models/mmod_human_face_detector.dat",
    "be467b1a76f482693de3b0f6a1ff91d092319be71523d4d4b0628f6a53fcb87a",
    filename="mmod_human_face_detector.dat",
    description="dlib MMOD CNN face detector (same file as davisking/dlib-models, decompressed)",
)
