package dev.optsidecar.server.snapshot;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Test data: float arrays as tensors, and reading them back with the chunk sizes seen. */
final class Tensors {
    private Tensors() {}

    static float[] random(int n, long seed) {
        Random r = new Random(seed);
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) r.nextGaussian();
        }
        return a;
    }

    /** Values whose bits must survive exactly: signed zeros, infinities, a NaN payload, subnormals. */
    static float[] awkward() {
        return new float[] {0f, -0f, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY,
                Float.intBitsToFloat(0x7fc12345), Float.MIN_VALUE, -Float.MIN_NORMAL / 3, Float.MAX_VALUE, 1f / 3,
                -7.25f, 1e-30f, 123456.79f, 42f, -1f, 0.1f, 2f, 3f, 5f, 8f, 13f, 21f};
    }

    static TensorOut of(String key, float[] values, long... shape) {
        return new TensorOut(key, shape, (offset, count, dst) -> {
            dst.asFloatBuffer().put(values, (int) offset, count);
            dst.position(dst.position() + count * Float.BYTES);
        });
    }

    /** Reads a whole tensor, checking that chunks arrive in order and hold at most 1 MiB. */
    static final class Collected {
        final float[] values;
        final List<Integer> chunkBytes = new ArrayList<>();

        Collected(SafetensorsFile f, String key) throws IOException {
            long numel = f.tensors().get(key).numel();
            values = new float[(int) numel];
            long[] next = {0};
            f.readAll(key, (offset, src) -> {
                assertEquals(next[0], offset, "chunks arrive in order");
                int n = src.remaining() / Float.BYTES;
                assertTrue(src.remaining() <= 1 << 20, "chunk of at most 1 MiB");
                chunkBytes.add(src.remaining());
                src.order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(values, (int) offset, n);
                next[0] += n;
            });
            assertEquals(numel, next[0]);
        }
    }

    static void assertBitExact(float[] expected, float[] actual) {
        assertEquals(expected.length, actual.length);
        int[] e = new int[expected.length];
        int[] a = new int[actual.length];
        for (int i = 0; i < e.length; i++) {
            e[i] = Float.floatToRawIntBits(expected[i]);
            a[i] = Float.floatToRawIntBits(actual[i]);
        }
        assertArrayEquals(e, a);
    }

    /** Flips every bit of the byte at {@code position} (negative: from the end). */
    static void flipByte(Path p, long position) throws IOException {
        byte[] b = Files.readAllBytes(p);
        int at = (int) (position < 0 ? b.length + position : position);
        b[at] ^= (byte) 0xff;
        Files.write(p, b);
    }

    static long headerLength(Path p) throws IOException {
        byte[] b = Files.readAllBytes(p);
        return ByteBuffer.wrap(b, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
    }
}
