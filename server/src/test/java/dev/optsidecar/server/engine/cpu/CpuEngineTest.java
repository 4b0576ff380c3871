package dev.optsidecar.server.engine.cpu;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.AlgorithmDefinition;
import dev.optsidecar.server.optim.Algorithms;
import dev.optsidecar.server.optim.Hyperparameters;
import org.junit.jupiter.api.Test;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

class CpuEngineTest {
    private static Algorithm algorithm(String name, Map<String, Double> hp) {
        AlgorithmDefinition def = Algorithms.byName(name, "test");
        Struct.Builder s = Struct.newBuilder();
        hp.forEach((k, v) -> s.putFields(k, Value.newBuilder().setNumberValue(v).build()));
        return def.create(Hyperparameters.merge(def, Map.of("hp", s.build())));
    }

    /**
     * The same steps on small blocks over several threads must give exactly what one thread gives
     * on one contiguous block: blocking and splitting change where the loop runs, never the math.
     */
    @Test
    void blocksAndThreadsDoNotChangeResults() {
        int n = 300_001; // not a multiple of the block size, so the last block is short
        Algorithm radam = algorithm("RAdam", Map.of("lr", 0.01, "weight_decay", 0.01));
        float[] init = TestData.random(n, 1);
        try (CpuEngine reference = new CpuEngine(1, 1 << 20); CpuEngine blocked = new CpuEngine(2, 1 << 12)) {
            EngineTensor a = reference.allocate(n, 2);
            EngineTensor b = blocked.allocate(n, 2);
            a.writeParams(0, TestData.le(init));
            b.writeParams(0, TestData.le(init));
            for (int t = 1; t <= 8; t++) {
                float[] g = TestData.random(n, 100 + t);
                a.writeGradient(0, TestData.le(g));
                // Arrive in uneven chunks that straddle block boundaries.
                for (int off = 0; off < n; off += 5003) {
                    int len = Math.min(5003, n - off);
                    float[] part = new float[len];
                    System.arraycopy(g, off, part, 0, len);
                    b.writeGradient(off, TestData.le(part));
                }
                reference.run(List.of(TestData.step(a, radam, t, 0.01)));
                blocked.run(List.of(TestData.step(b, radam, t, 0.01)));
            }
            assertArrayEquals(TestData.params(a), TestData.params(b));
            ByteBuffer slotA = ByteBuffer.allocate(n * 4);
            ByteBuffer slotB = ByteBuffer.allocate(n * 4);
            a.readSlot(1, 0, n, slotA);
            b.readSlot(1, 0, n, slotB);
            assertEquals(slotA.flip(), slotB.flip());
        }
    }

    /** Many small tensors in one step are spread over the pool and each is stepped exactly once. */
    @Test
    void manySmallTensorsEachStepOnce() {
        Algorithm sgd = algorithm("SGD", Map.of("lr", 1.0));
        try (CpuEngine engine = new CpuEngine(2, 1 << 10)) {
            List<EngineTensor> tensors = new ArrayList<>();
            List<TensorProgram> steps = new ArrayList<>();
            for (int i = 0; i < 200; i++) {
                EngineTensor t = engine.allocate(1 + i * 37L, 0);
                float[] ones = new float[(int) t.numel()];
                java.util.Arrays.fill(ones, 1f);
                t.writeGradient(0, TestData.le(ones));
                tensors.add(t);
                steps.add(TestData.step(t, sgd, 1, 1.0));
            }
            engine.run(steps);
            for (EngineTensor t : tensors) {
                for (float v : TestData.params(t)) {
                    assertEquals(-1f, v); // 0 - lr * 1, once
                }
            }
        }
    }

    /** Offsets are longs: a range past the end is refused rather than wrapped. */
    @Test
    void outOfRangeWritesAreRefused() {
        try (CpuEngine engine = new CpuEngine(1, 1 << 10)) {
            EngineTensor t = engine.allocate(2048, 0);
            assertThrows(IndexOutOfBoundsException.class, () -> t.writeGradient(2047, TestData.le(new float[2])));
            assertThrows(IndexOutOfBoundsException.class, () -> t.writeParams(-1, TestData.le(new float[1])));
            assertThrows(IndexOutOfBoundsException.class,
                    () -> t.readParams(Long.MAX_VALUE - 1, 4, ByteBuffer.allocate(16)));
        }
    }

    @Test
    void writeGradientReportsTheFirstNonFiniteElement() {
        try (CpuEngine engine = new CpuEngine(1, 1 << 10)) {
            EngineTensor t = engine.allocate(5000, 0);
            float[] g = new float[3000];
            assertEquals(-1, t.writeGradient(100, TestData.le(g)).firstNonFinite());
            g[2500] = Float.POSITIVE_INFINITY;
            g[2900] = Float.NaN;
            assertEquals(100 + 2500, t.writeGradient(100, TestData.le(g)).firstNonFinite());
        }
    }
}
