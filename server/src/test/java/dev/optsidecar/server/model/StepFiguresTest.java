package dev.optsidecar.server.model;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.GroupScalarInfo;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.TestData;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** What each StepResult reports, checked against the same figures computed by the test. */
class StepFiguresTest {
    @RegisterExtension
    static final SidecarFixture LIVE = SidecarFixture.inProcess(2, 1L << 28);


    private static double norm(float[]... arrays) {
        double s = 0;
        for (float[] a : arrays) {
            for (float v : a) {
                s += (double) v * v;
            }
        }
        return Math.sqrt(s);
    }

    private static ModelSpec withConfig(ModelSpec spec, double clip, boolean updateNorm) {
        return spec.toBuilder().setOptimizer(spec.getOptimizer().toBuilder()
                .setClipGradNorm(clip).setReportUpdateNorm(updateNorm)).build();
    }

    /** grad_norm is the global L2 norm; update_norm is |θ_new − θ_old| over all tensors. */
    @Test
    void gradientAndUpdateNorms() {
        float[] a0 = TestData.random(300_000, 1);
        float[] b0 = TestData.random(7, 2);
        LIVE.client().register(withConfig(TestData.spec("norms", "RAdam", TestData.hp("lr", 0.01), 300_000, 7).build(), 0, true),
                TestData.data(a0, b0));
        float[] a = a0.clone();
        float[] b = b0.clone();
        try (Trainer tr = LIVE.client().trainer("norms", "c")) {
            for (int t = 1; t <= 3; t++) {
                float[] ga = TestData.random(300_000, 10 + t);
                float[] gb = TestData.random(7, 20 + t);
                float[] beforeA = a.clone();
                float[] beforeB = b.clone();
                StepResult r = tr.step(TestData.data(ga, gb), TestData.data(a, b));
                assertEquals(norm(ga, gb), r.getGradNorm(), 1e-12 * norm(ga, gb));
                assertEquals(1.0, r.getClipCoefficient());
                assertTrue(r.hasUpdateNorm());
                float[] da = new float[a.length];
                float[] db = new float[b.length];
                for (int i = 0; i < a.length; i++) {
                    da[i] = (float) ((double) a[i] - beforeA[i]);
                }
                for (int i = 0; i < b.length; i++) {
                    db[i] = (float) ((double) b[i] - beforeB[i]);
                }
                assertEquals(norm(da, db), r.getUpdateNorm(), 1e-6 * norm(da, db));
            }
        }
        LIVE.client().register(TestData.spec("no-update-norm", "SGD", TestData.hp("lr", 0.1), 3).build(),
                TestData.data(new float[3]));
        try (Trainer tr = LIVE.client().trainer("no-update-norm", "c")) {
            assertFalse(tr.step(TestData.data(new float[] {1, 2, 2}), TestData.data(new float[3])).hasUpdateNorm());
        }
    }

    /**
     * Clipping by global norm scales every gradient by max_norm / (norm + 1e-6) when that is below
     * 1, before the optimizer sees them (torch's clip_grad_norm_ then step()): the result equals a
     * model without clipping fed the scaled gradients; below the threshold nothing changes.
     */
    @Test
    void clippingByGlobalNormScalesGradientsFirst() {
        float[] init = TestData.random(40, 3);
        ModelSpec spec = TestData.spec("clip", "AdamW", TestData.hp("lr", 0.01), 40).build();
        LIVE.client().register(withConfig(spec, 2.0, false), TestData.data(init));
        LIVE.client().register(spec.toBuilder().setName("clip-twin").build(), TestData.data(init));
        float[] clipped = new float[40];
        float[] twin = new float[40];
        try (Trainer tr = LIVE.client().trainer("clip", "c"); Trainer tw = LIVE.client().trainer("clip-twin", "c")) {
            for (int t = 1; t <= 4; t++) {
                float[] g = TestData.random(40, 30 + t);
                if (t == 3) {
                    for (int i = 0; i < g.length; i++) {
                        g[i] *= 0.01f; // below the threshold: no clipping
                    }
                }
                double n = norm(g);
                StepResult r = tr.step(TestData.data(g), TestData.data(clipped));
                assertEquals(Math.min(1.0, 2.0 / (n + 1e-6)), r.getClipCoefficient(), 1e-12);
                assertEquals(t == 3, r.getClipCoefficient() == 1.0);
                double coef = r.getClipCoefficient(); // the server's sum order may differ in the last bit
                float[] scaled = new float[g.length];
                for (int i = 0; i < g.length; i++) {
                    scaled[i] = g[i] * (float) coef;
                }
                tw.step(TestData.data(scaled), TestData.data(twin));
                assertArrayEquals(twin, clipped, "step " + t);
            }
        }
    }

    /** Schedule-Free's figures: lr_k under warmup, c_t = 1 at the first step, counters after the step. */
    @Test
    void scheduleFreeReportsItsAveragingWeight() {
        LIVE.client().register(TestData.spec("sf-figures", "SGDScheduleFree", TestData.hp("lr", 0.5, "warmup_steps", 4), 5)
                .build(), TestData.data(new float[5]));
        try (Trainer tr = LIVE.client().trainer("sf-figures", "c")) {
            StepResult first = tr.step(TestData.data(TestData.random(5, 1)), List.of(TensorData.of(new float[5])));
            assertEquals(0.5, first.getGroups(0).getLr());
            assertEquals(0.5 * 1 / 4, first.getGroups(0).getEffectiveLr());
            assertEquals(1.0, first.getGroups(0).getAveragingWeight());
            double w1 = Math.pow(0.125, 2);
            assertEquals(Map.of("k", 1.0, "weight_sum", w1, "lr_max", 0.125), first.getGroups(0).getScalarsMap());
            StepResult second = tr.step(TestData.data(TestData.random(5, 2)), List.of(TensorData.of(new float[5])));
            double w2 = Math.pow(0.25, 2); // weights use the running max lr, here the warming lr itself
            assertEquals(w2 / (w1 + w2), second.getGroups(0).getAveragingWeight(), 1e-15);
            assertEquals(Map.of("k", 2.0, "weight_sum", w1 + w2, "lr_max", 0.25), second.getGroups(0).getScalarsMap());
        }
        ModelInfo info = LIVE.client().describe("sf-figures");
        assertEquals(List.of(scalar("k", 0), scalar("weight_sum", 0), scalar("lr_max", -1)),
                info.getGroups(0).getScalarsList(), "declared, with their values before the first step");
        assertEquals(Map.of("k", 2.0, "weight_sum", 0.078125, "lr_max", 0.25), info.getState().getGroups(0).getScalarsMap());
    }

    /** An algorithm that keeps no group scalars declares none, reports none and saves none. */
    @Test
    void adamHasNoGroupScalars() {
        LIVE.client().register(TestData.spec("adam-figures", "Adam", TestData.hp("lr", 0.1), 3).build(),
                TestData.data(new float[3]));
        try (Trainer tr = LIVE.client().trainer("adam-figures", "c")) {
            StepResult r = tr.step(TestData.data(TestData.random(3, 1)), List.of(TensorData.of(new float[3])));
            assertEquals(Map.of(), r.getGroups(0).getScalarsMap());
            assertTrue(Double.isNaN(r.getGroups(0).getAveragingWeight()));
        }
        ModelInfo info = LIVE.client().describe("adam-figures");
        assertEquals(List.of(), info.getGroups(0).getScalarsList());
        assertEquals(Map.of(), info.getState().getGroups(0).getScalarsMap());
    }

    private static GroupScalarInfo scalar(String name, double initial) {
        return GroupScalarInfo.newBuilder().setName(name).setInitial(initial).build();
    }
}
