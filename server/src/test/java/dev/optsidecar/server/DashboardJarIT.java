package dev.optsidecar.server;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.io.InputStream;
import java.net.ConnectException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.List;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;

/** The packaged jar serves the dashboard's files, byte for byte as the source tree has them. */
class DashboardJarIT {
    private static final List<String> FILES = List.of("index.html", "dashboard.js", "plot.js", "dashboard.css",
            "icon.svg");
    private final HttpClient http = HttpClient.newHttpClient();

    @Test
    void packagedServerServesTheDashboard() throws Exception {
        int httpPort = ServerJar.freePort();
        try (ServerJar server = ServerJar.start("--port", "0", "--http-port", String.valueOf(httpPort))) {
            String base = "http://127.0.0.1:" + httpPort + "/";
            HttpResponse<byte[]> root = getWhenUp(base);
            assertEquals(200, root.statusCode());
            assertArrayEquals(source("index.html"), root.body(), "/ is index.html");
            for (String file : FILES) {
                HttpResponse<byte[]> served = http.send(HttpRequest.newBuilder(URI.create(base + file)).build(),
                        HttpResponse.BodyHandlers.ofByteArray());
                assertEquals(200, served.statusCode(), file);
                assertArrayEquals(source(file), served.body(), file);
            }
        }
    }

    /** The HTTP endpoint opens beside the gRPC port: asks again for a few seconds while it is not up. */
    private HttpResponse<byte[]> getWhenUp(String url) throws IOException, InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (true) {
            try {
                return http.send(HttpRequest.newBuilder(URI.create(url)).build(), HttpResponse.BodyHandlers.ofByteArray());
            } catch (ConnectException e) {
                if (System.nanoTime() > deadline) {
                    throw e;
                }
                Thread.sleep(100);
            }
        }
    }

    private static byte[] source(String file) throws IOException {
        try (InputStream in = DashboardJarIT.class.getClassLoader().getResourceAsStream("dashboard/" + file)) {
            assertNotNull(in, "dashboard/" + file + " on the build's classpath");
            return in.readAllBytes();
        }
    }
}
