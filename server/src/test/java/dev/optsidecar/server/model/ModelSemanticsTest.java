package dev.optsidecar.server.model;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.AlgorithmDefinition;
import dev.optsidecar.server.optim.Algorithms;
import dev.optsidecar.server.optim.Hyperparameters;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;

/**
 * Parameter groups, tensors without gradients, client-set learning rates and multi-chunk transfer,
 * each checked through the service against an independent way of computing the same thing.
 */
class ModelSemanticsTest {
    @RegisterExtension
    static final SidecarFixture LIVE = SidecarFixture.inProcess(2, 1L << 30);
    // Helpers shared with other tests live in TestData.


    @Test
    void eachGroupStepsWithItsOwnHyperparameters() {
        float[] w = TestData.random(40, 1);
        float[] bias = TestData.random(7, 2);
        ModelSpec grouped = TestData.spec("groups", "AdamW", TestData.hp("lr", 0.01, "weight_decay", 0.1), 40, 7)
                .addGroups(ParamGroup.newBuilder().setName("no_decay").addTensors("t1")
                        .setHyperparameters(TestData.hp("weight_decay", 0.0)))
                .build();
        LIVE.client().register(grouped, TestData.data(w, bias));
        LIVE.client().register(TestData.spec("groups-w", "AdamW", TestData.hp("lr", 0.01, "weight_decay", 0.1), 40).build(), TestData.data(w));
        LIVE.client().register(TestData.spec("groups-b", "AdamW", TestData.hp("lr", 0.01, "weight_decay", 0.0), 7).build(), TestData.data(bias));

        float[] w1 = new float[40], b1 = new float[7], wAlone = new float[40], bAlone = new float[7];
        try (Trainer both = LIVE.client().trainer("groups", "c"); Trainer onlyW = LIVE.client().trainer("groups-w", "c");
             Trainer onlyB = LIVE.client().trainer("groups-b", "c")) {
            for (int t = 1; t <= 5; t++) {
                float[] gw = TestData.random(40, 10 + t);
                float[] gb = TestData.random(7, 20 + t);
                both.step(TestData.data(gw, gb), TestData.data(w1, b1));
                onlyW.step(TestData.data(gw), TestData.data(wAlone));
                onlyB.step(TestData.data(gb), TestData.data(bAlone));
            }
        }
        assertArrayEquals(wAlone, w1);
        assertArrayEquals(bAlone, b1);
        ModelInfo info = LIVE.client().describe("groups");
        assertEquals(List.of("no_decay", "default"), info.getGroupsList().stream().map(g -> g.getName()).toList());
        assertEquals(0.0, info.getGroups(0).getHyperparameters().getFieldsOrThrow("weight_decay").getNumberValue());
        assertEquals(0.1, info.getGroups(1).getHyperparameters().getFieldsOrThrow("weight_decay").getNumberValue());
        assertEquals("no_decay", info.getTensors(1).getGroup());
    }

    /** A tensor listed in no_grad is untouched, and its own step count (bias correction) does not advance. */
    @Test
    void tensorsWithoutGradientAreSkippedEntirely() {
        float[] a0 = TestData.random(9, 3);
        float[] b0 = TestData.random(5, 4);
        LIVE.client().register(TestData.spec("nograd", "Adam", TestData.hp("lr", 0.05), 9, 5).build(), TestData.data(a0, b0));
        LIVE.client().register(TestData.spec("nograd-b", "Adam", TestData.hp("lr", 0.05), 5).build(), TestData.data(b0));
        float[] a = new float[9], b = new float[5], bAlone = new float[5];
        float[] gb1 = TestData.random(5, 31), gb3 = TestData.random(5, 33);
        try (Trainer tr = LIVE.client().trainer("nograd", "c"); Trainer alone = LIVE.client().trainer("nograd-b", "c")) {
            tr.step(TestData.data(TestData.random(9, 30), gb1), TestData.data(a, b));
            float[] bAfterFirst = b.clone();
            StepResult second = tr.step(TestData.data(TestData.random(9, 32), null), TestData.data(a, b));
            assertArrayEquals(bAfterFirst, b);
            assertEquals(2, second.getVersion());
            tr.step(TestData.data(TestData.random(9, 34), gb3), TestData.data(a, b));
            alone.step(TestData.data(gb1), TestData.data(bAlone));
            alone.step(TestData.data(gb3), TestData.data(bAlone));
        }
        assertArrayEquals(bAlone, b); // b's second step used t = 2, as in torch
        ModelInfo info = LIVE.client().describe("nograd");
        assertEquals(3, info.getVersion());
        assertEquals(3, info.getTensors(0).getSteps());
        assertEquals(2, info.getTensors(1).getSteps());
    }

    /** A client-side scheduler's lr reaches the server, persists, and is what the kernel used. */
    @Test
    void groupLrFromTheClientIsUsedAndKept() {
        float[] p0 = TestData.random(64, 5);
        LIVE.client().register(TestData.spec("lr", "RAdam", TestData.hp("lr", 0.01), 64).build(), TestData.data(p0));
        float[] g1 = TestData.random(64, 51), g2 = TestData.random(64, 52), g3 = TestData.random(64, 53);
        float[] p = new float[64];
        try (Trainer tr = LIVE.client().trainer("lr", "c")) {
            assertEquals(0.01, tr.step(TestData.data(g1), TestData.data(p)).getGroups(0).getLr());
            StepResult r2 = tr.step(TestData.data(g2), TestData.data(p), new Trainer.StepOptions().groupLr("default", 0.004));
            assertEquals(0.004, r2.getGroups(0).getLr());
            assertEquals(0.004, tr.step(TestData.data(g3), TestData.data(p)).getGroups(0).getLr());
        }
        assertEquals(0.004, LIVE.client().describe("lr").getGroups(0).getLr());
        float[] expected = TestData.applyLocally("RAdam", TestData.hp("lr", 0.01), p0, List.of(g1, g2, g3), new double[] {0.01, 0.004, 0.004});
        assertArrayEquals(expected, p);
    }

    /**
     * A tensor of several chunks, sent and returned over the socket, ends exactly where the engine
     * puts it when driven directly: the transport neither loses nor reorders a value.
     */
    @Test
    void multiChunkStepsMatchTheEngineDrivenDirectly() {
        int n = 1_000_003; // about 3.8 chunks, with a short last chunk
        float[] p0 = TestData.random(n, 6);
        Struct hp = TestData.hp("lr", 0.001, "weight_decay", 0.01, "amsgrad", true);
        LIVE.client().register(TestData.spec("big", "Adam", hp, n, 3).build(), TestData.data(p0, new float[] {1, 2, 3}));
        List<float[]> grads = List.of(TestData.random(n, 61), TestData.random(n, 62), TestData.random(n, 63));
        float[] p = new float[n];
        float[] small = new float[3];
        try (Trainer tr = LIVE.client().trainer("big", "c")) {
            for (float[] g : grads) {
                tr.step(TestData.data(g, new float[] {0.5f, -0.5f, 1f}), TestData.data(p, small));
            }
        }
        assertArrayEquals(TestData.applyLocally("Adam", hp, p0, grads, new double[] {0.001, 0.001, 0.001}), p);
        float[] pulled = new float[n];
        float[] pulledSmall = new float[3];
        OptSidecarClient.Weights w = LIVE.client().pull("big", TestData.data(pulled, pulledSmall));
        assertEquals(3, w.version());
        assertEquals(ViewKind.VIEW_TRAIN, w.view().getKind());
        assertArrayEquals(p, pulled);
        assertFalse(Arrays.equals(p0, p));
    }
}
