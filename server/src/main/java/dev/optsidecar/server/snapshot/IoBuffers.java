package dev.optsidecar.server.snapshot;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/** One reusable 1 MiB direct buffer per thread for streaming tensor data through file channels. */
final class IoBuffers {
    static final int SIZE = 1 << 20;

    private static final ThreadLocal<ByteBuffer> CACHE = new ThreadLocal<>();

    private IoBuffers() {}

    /** A cleared little-endian buffer; a nested call on the same thread gets a fresh one. */
    static ByteBuffer take() {
        ByteBuffer b = CACHE.get();
        if (b == null) {
            b = ByteBuffer.allocateDirect(SIZE);
        } else {
            CACHE.set(null);
        }
        b.clear();
        return b.order(ByteOrder.LITTLE_ENDIAN);
    }

    static void give(ByteBuffer b) {
        CACHE.set(b);
    }
}
