// AudioWorklet side of capture.js: collects the input into blocks of
// ``block`` samples per channel and posts each with the number (in the
// AudioContext's sample clock) of its first sample. Outputs silence.

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.block = options.processorOptions.block;
    this.planes = null;
    this.filled = 0;
    this.firstFrame = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    if (this.planes === null || this.planes.length !== input.length) {
      this.planes = input.map(() => new Float32Array(this.block));
      this.filled = 0;
    }
    let offset = 0;
    const length = input[0].length;
    while (offset < length) {
      if (this.filled === 0) this.firstFrame = currentFrame + offset;
      const count = Math.min(length - offset, this.block - this.filled);
      input.forEach((channel, i) => {
        this.planes[i].set(channel.subarray(offset, offset + count), this.filled);
      });
      this.filled += count;
      offset += count;
      if (this.filled === this.block) {
        this.port.postMessage({ firstFrame: this.firstFrame, planes: this.planes },
          this.planes.map((plane) => plane.buffer));
        this.planes = input.map(() => new Float32Array(this.block));
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("rtmpd-capture", CaptureProcessor);
