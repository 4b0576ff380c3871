package dev.optsidecar.server.optim;

import com.google.protobuf.Struct;
import dev.optsidecar.server.TestData;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * RAdam(original) has no recorded vectors, so it is checked against a float64 transcription of
 * algorithms.md §4.2 (the paper's implementation), within the tolerance the shared vectors use.
 */
class RAdamOriginalTest {
    private static final double ATOL = 1e-5;
    private static final double RTOL = 1e-4;

    /** The specification in double precision, one parameter vector. */
    private static double[][] specTrajectory(double[] init, List<float[]> grads, double lr, double b1, double b2,
                                             double eps, double wd, boolean degenerated) {
        int n = init.length;
        double[] p = init.clone();
        double[] m = new double[n];
        double[] v = new double[n];
        double[][] out = new double[grads.size()][];
        double rhoInf = 2 / (1 - b2) - 1;
        for (int s = 0; s < grads.size(); s++) {
            int t = s + 1;
            float[] g = grads.get(s);
            for (int i = 0; i < n; i++) {
                m[i] = b1 * m[i] + (1 - b1) * g[i];
                v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
            }
            double bc1 = 1 - Math.pow(b1, t);
            double bc2 = 1 - Math.pow(b2, t);
            double rho = rhoInf - 2 * t * Math.pow(b2, t) / bc2;
            if (rho >= 5) {
                double r = Math.sqrt((rho - 4) * (rho - 2) * rhoInf / ((rhoInf - 4) * (rhoInf - 2) * rho));
                for (int i = 0; i < n; i++) {
                    p[i] -= wd * lr * p[i];
                    p[i] -= lr * r * Math.sqrt(bc2) / bc1 * m[i] / (Math.sqrt(v[i]) + eps);
                }
            } else if (degenerated) {
                for (int i = 0; i < n; i++) {
                    p[i] -= wd * lr * p[i];
                    p[i] -= lr * m[i] / bc1;
                }
            }
            out[s] = p.clone();
        }
        return out;
    }

    private static void check(boolean degenerated) {
        int n = 33;
        float[] init = TestData.random(n, 7);
        List<float[]> grads = new ArrayList<>();
        for (int t = 0; t < 30; t++) {
            grads.add(TestData.random(n, 70 + t));
        }
        Struct hp = TestData.hp("lr", 0.02, "weight_decay", 0.05, "degenerated_to_sgd", degenerated);
        double[] initD = new double[n];
        for (int i = 0; i < n; i++) {
            initD[i] = init[i];
        }
        double[][] expected = specTrajectory(initD, grads, 0.02, 0.9, 0.999, 1e-8, 0.05, degenerated);
        for (int steps = 1; steps <= grads.size(); steps++) {
            double[] lrs = new double[steps];
            java.util.Arrays.fill(lrs, 0.02);
            float[] got = TestData.applyLocally("RAdam(original)", hp, init, grads.subList(0, steps), lrs);
            if (!degenerated && steps <= 5) {
                // ρt < 5 for t <= 5 at β2 = 0.999: the parameter must not move at all.
                assertArrayEquals(init, got, "step " + steps);
            }
            for (int i = 0; i < n; i++) {
                double e = expected[steps - 1][i];
                assertTrue(Math.abs(got[i] - e) <= ATOL + RTOL * Math.abs(e),
                        "step " + steps + " element " + i + ": got " + got[i] + ", spec " + e);
            }
        }
    }

    @Test
    void withoutDegenerationEarlyStepsLeaveParametersAlone() {
        check(false);
    }

    @Test
    void degeneratedToSgdTakesMomentumStepsEarly() {
        check(true);
    }
}
