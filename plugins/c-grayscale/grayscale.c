// A wasmcast frame plugin in C: takes the colour out of every picture.
//
// The chroma planes of an I420 picture follow its luma plane; setting them all to 128 leaves a grey
// picture. The plugin also counts pictures in its metric `pictures`. Its bindings (frame_plugin.h)
// come from wit-bindgen's C generator; docs/plugins.md ("Python, JavaScript and C") shows how to
// build it.

#include <stdio.h>
#include <string.h>

#include "frame_plugin.h"

static double pictures = 0;

bool exports_wasmcast_plugin_frame_filter_init(frame_plugin_string_t *err) {
    (void)err;
    frame_plugin_string_t route;
    wasmcast_plugin_host_route(&route);
    char line[160];
    int len = snprintf(line, sizeof line, "grayscale in C, on route %.*s", (int)route.len,
                       (const char *)route.ptr);
    frame_plugin_string_free(&route);
    frame_plugin_string_t message = {(uint8_t *)line, (size_t)len};
    wasmcast_plugin_host_log(WASMCAST_PLUGIN_HOST_LEVEL_INFO, &message);
    return true;
}

void exports_wasmcast_plugin_frame_filter_process(
    exports_wasmcast_plugin_frame_filter_frame_t *frame,
    exports_wasmcast_plugin_frame_filter_frame_verdict_t *ret) {
    // The frame, its data included, is the plugin's: changed in place and handed back whole.
    size_t luma = (size_t)frame->y_stride * frame->height;
    if (luma < frame->data.len) {
        memset(frame->data.ptr + luma, 128, frame->data.len - luma);
    }
    pictures += 1;
    frame_plugin_string_t name;
    frame_plugin_string_set(&name, "pictures");
    wasmcast_plugin_host_set_metric(&name, pictures);
    ret->tag = WASMCAST_PLUGIN_FRAMES_FRAME_VERDICT_REPLACE;
    ret->val.replace = *frame;
}
