// A wasmcast frame plugin in JavaScript: takes the colour out of every picture.
import { log, route, setMetric } from "wasmcast:plugin/host@0.1.2";

let pictures = 0;

export const frameFilter = {
  init() {
    log("info", `grayscale in JavaScript, on route ${route()}`);
  },
  process(frame) {
    // The chroma planes follow the luma plane; 128 everywhere there leaves a grey picture.
    frame.data.fill(128, frame.yStride * frame.height);
    pictures += 1;
    setMetric("pictures", pictures);
    return { tag: "replace", val: frame };
  },
};
