package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.ViewChunks;

/**
 * The last loop of a step that also writes its reply: the θ the step just wrote, elements
 * {@code [from, to)} of one block, copied into the reply's chunks (rounded there for a 16-bit
 * wire) while the tile is still in cache.
 */
final class WeightsOut implements BlockLoop {
    private final ViewChunks out;
    /** The tensor's element index of the block's first element. */
    private final long blockStart;

    WeightsOut(ViewChunks out, long blockStart) {
        this.out = out;
        this.blockStart = blockStart;
    }

    @Override
    public void apply(float[] p, float[] g, float[][] state, int from, int to) {
        int per = out.chunkElements();
        for (int i = from; i < to; ) {
            long element = blockStart + i;
            int chunk = (int) (element / per);
            int at = (int) (element - out.offset(chunk));
            int n = Math.min(to - i, out.length(chunk) - at);
            BulkLoops.toWire(out.wire(), p, i, i + n, out.array(chunk), at * out.wire().bytes);
            i += n;
        }
    }
}
