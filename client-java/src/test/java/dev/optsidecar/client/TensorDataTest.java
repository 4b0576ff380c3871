package dev.optsidecar.client;

import org.junit.jupiter.api.Test;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

class TensorDataTest {
    private static ByteBuffer le(float... values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        b.asFloatBuffer().put(values);
        return b;
    }

    @Test
    void floatArrayReadsAndWritesLittleEndianAtOffsets() {
        float[] a = {1, 2, 3, 4, 5};
        TensorData t = TensorData.of(a);
        assertEquals(5, t.numel());
        ByteBuffer out = ByteBuffer.allocate(8);
        t.read(2, 2, out);
        assertEquals(8, out.position());
        assertEquals(le(3, 4), out.flip());
        t.write(3, le(-1, -2));
        assertArrayEquals(new float[] {1, 2, 3, -1, -2}, a);
        assertNull(t.wrap(0, 1)); // float[] must be copied out
    }

    @Test
    void byteBufferIsWrappedWithoutCopy() {
        ByteBuffer backing = le(1, 2, 3, 4);
        TensorData t = TensorData.of(backing);
        assertEquals(4, t.numel());
        ByteBuffer view = t.wrap(1, 2);
        assertEquals(le(2, 3), view);
        t.write(0, le(9));
        assertEquals(9f, backing.order(ByteOrder.LITTLE_ENDIAN).getFloat(0));
        assertThrows(IllegalArgumentException.class, () -> TensorData.of(ByteBuffer.allocate(6)));
    }
}
