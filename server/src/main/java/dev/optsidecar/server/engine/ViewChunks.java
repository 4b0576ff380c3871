package dev.optsidecar.server.engine;

import java.util.concurrent.atomic.AtomicReferenceArray;

/**
 * One tensor's weights after a step, written by the step's own pass as the chunks a reply sends:
 * elements {@code [i × chunkElements, (i + 1) × chunkElements)} go to chunk {@code i}, a byte
 * array of little-endian {@code wire} values that a message wraps as it is. A chunk's array is
 * allocated by the first thread that writes into it, so its zeroing, like its filling, happens on
 * the step's threads, beside the values it is about to hold.
 */
public final class ViewChunks {
    private final long numel;
    private final WireType wire;
    private final int chunkElements;
    private final AtomicReferenceArray<byte[]> arrays;

    public ViewChunks(long numel, WireType wire, int chunkElements) {
        if (numel <= 0 || chunkElements <= 0) {
            throw new IllegalArgumentException(numel + " elements in chunks of " + chunkElements);
        }
        this.numel = numel;
        this.wire = wire;
        this.chunkElements = chunkElements;
        this.arrays = new AtomicReferenceArray<>(Math.toIntExact((numel + chunkElements - 1) / chunkElements));
    }

    public WireType wire() {
        return wire;
    }

    public int chunkElements() {
        return chunkElements;
    }

    public int count() {
        return arrays.length();
    }

    /** Element index of chunk {@code chunk}'s first value. */
    public long offset(int chunk) {
        return (long) chunk * chunkElements;
    }

    /** The number of values chunk {@code chunk} holds. */
    public int length(int chunk) {
        return (int) Math.min(chunkElements, numel - offset(chunk));
    }

    /** Chunk {@code chunk}'s bytes, allocated on first use. */
    public byte[] array(int chunk) {
        byte[] a = arrays.get(chunk);
        if (a == null) {
            byte[] fresh = new byte[length(chunk) * wire.bytes];
            a = arrays.compareAndExchange(chunk, null, fresh);
            if (a == null) {
                a = fresh;
            }
        }
        return a;
    }

    /** Whether every chunk was written into (a step that covered the whole tensor). */
    public boolean complete() {
        for (int i = 0; i < arrays.length(); i++) {
            if (arrays.get(i) == null) {
                return false;
            }
        }
        return true;
    }
}
