// The TensorFlow version this library was compiled against. The C++ ABI of
// TensorFlow (and of tf2xla in particular) changes between releases, so the
// Python loader refuses to load a library built for another version.

#ifndef KERAS_MARGIN_TF_VERSION
#error "Build with -DKERAS_MARGIN_TF_VERSION=<tensorflow version>"
#endif

#define KERAS_MARGIN_STR_(x) #x
#define KERAS_MARGIN_STR(x) KERAS_MARGIN_STR_(x)

// Found by the loader in the file's bytes before anything is loaded: loading
// the library runs its op and kernel registrations, which is exactly what a
// mismatched build must not do.
__attribute__((used)) static const char kVersionMarker[] =
    "KERAS_MARGIN_TF_VERSION=" KERAS_MARGIN_STR(KERAS_MARGIN_TF_VERSION);

extern "C" __attribute__((visibility("default"))) const char*
keras_margin_tf_version() {
  return KERAS_MARGIN_STR(KERAS_MARGIN_TF_VERSION);
}
