package dev.optsidecar.server.engine.cpu;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.ViewChunks;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.engine.kernel.KernelCall;
import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.AlgorithmDefinition;
import dev.optsidecar.server.optim.Algorithms;
import dev.optsidecar.server.optim.EmaShadow;
import dev.optsidecar.server.optim.GroupScalars;
import dev.optsidecar.server.optim.Hyperparameters;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A step that writes its reply's weights ({@link TensorProgram#weightsOut}) writes exactly the
 * chunks a read after the step would: the new θ of every element, in every chunk, across block
 * and tile boundaries, after every call of the program (an EMA blend included), in each wire type.
 */
class WeightsOutTest {
    private static Algorithm radam() {
        AlgorithmDefinition def = Algorithms.byName("RAdam", "test");
        Struct.Builder s = Struct.newBuilder();
        Map.of("lr", 0.01, "weight_decay", 0.01).forEach((k, v) -> s.putFields(k, Value.newBuilder().setNumberValue(v).build()));
        return def.create(Hyperparameters.merge(def, Map.of("hp", s.build())));
    }

    /** What a read of elements [offset, offset + count) in {@code wire} gives after the step. */
    private static byte[] read(EngineTensor t, long offset, int count, WireType wire) {
        ByteBuffer out = ByteBuffer.allocate(count * wire.bytes);
        t.readParams(offset, count, out, wire);
        return out.array();
    }

    @ParameterizedTest
    @EnumSource(WireType.class)
    void theStepWritesTheChunksAReadAfterItWouldGive(WireType wire) {
        // Blocks of 4096 floats, chunks of 3000 values: chunks straddle blocks, and the last of
        // each is short; 100 001 elements make ranges of uneven length over two threads.
        int n = 100_001;
        int perChunk = 3000;
        Algorithm radam = radam();
        EmaShadow ema = new EmaShadow(0.9, 1);
        try (CpuEngine engine = new CpuEngine(2, 1 << 12)) {
            EngineTensor t = engine.allocate(n, 3);
            t.writeParams(0, TestData.le(TestData.random(n, 7)));
            for (int step = 1; step <= 8; step++) {
                t.writeGradient(0, TestData.le(TestData.random(n, 100 + step)));
                List<KernelCall> calls = new ArrayList<>();
                calls.add(radam.plan(GroupScalars.initial(radam.groupScalars()), 0.01, 1f).forTensor().apply(step));
                calls.add(ema.update(step - 1, 2));
                ViewChunks out = new ViewChunks(n, wire, perChunk);
                engine.run(List.of(new TensorProgram(t, calls, out)));
                assertTrue(out.complete(), "every chunk written");
                assertEquals((n + perChunk - 1) / perChunk, out.count());
                for (int c = 0; c < out.count(); c++) {
                    assertEquals(out.length(c) * wire.bytes, out.array(c).length);
                    assertArrayEquals(read(t, out.offset(c), out.length(c), wire), out.array(c),
                            "chunk " + c + " after step " + step);
                }
            }
        }
    }

    @ParameterizedTest
    @EnumSource(WireType.class)
    void aShortTensorOnOneThreadFillsItsOneChunk(WireType wire) {
        Algorithm radam = radam();
        for (int n : new int[] {1, 255, 256, 4097}) {
            try (CpuEngine engine = new CpuEngine(1, 1 << 12)) {
                EngineTensor t = engine.allocate(n, 2);
                t.writeParams(0, TestData.le(TestData.random(n, 3)));
                t.writeGradient(0, TestData.le(TestData.random(n, 4)));
                ViewChunks out = new ViewChunks(n, wire, 1 << 19);
                engine.run(List.of(new TensorProgram(t, List.of(radam.plan(GroupScalars.initial(radam.groupScalars()),
                        0.01, 1f).forTensor().apply(1)), out)));
                assertEquals(1, out.count());
                assertArrayEquals(read(t, 0, n, wire), out.array(0), n + " elements");
            }
        }
    }

    @ParameterizedTest
    @EnumSource(WireType.class)
    void chunksAreCompleteOnlyOnceEachWasWritten(WireType wire) {
        ViewChunks out = new ViewChunks(10, wire, 4);
        assertEquals(3, out.count());
        assertEquals(8, out.offset(2));
        assertEquals(2, out.length(2));
        assertEquals(2 * wire.bytes, out.array(2).length);
        assertFalse(out.complete(), "chunks 0 and 1 were never written");
        out.array(0);
        out.array(1);
        assertTrue(out.complete());
        assertSame(out.array(1), out.array(1), "a chunk is allocated once");
    }
}
