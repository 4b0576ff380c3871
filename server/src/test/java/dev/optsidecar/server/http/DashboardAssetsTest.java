package dev.optsidecar.server.http;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.server.ListenAddress;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.model.Limits;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The dashboard's files as the HTTP endpoint serves them from the classpath, and the JSON routes
 * the page reads for a model whose name holds slashes (a sweep's), sent percent-encoded.
 */
class DashboardAssetsTest {
    private static final Pattern LOCAL_REFERENCE = Pattern.compile("(?:src|href)=\"([^\"]+)\"");
    private static final Pattern MODULE_IMPORT = Pattern.compile("from '\\./([^']+)'");
    private final HttpClient http = HttpClient.newHttpClient();
    private final ObjectMapper json = new ObjectMapper();
    private SocketServer server;
    private HttpApi api;

    @BeforeEach
    void start() throws Exception {
        server = SocketServer.start(List.of(new ListenAddress.Tcp("127.0.0.1", 0)), 1, 64L << 20, null,
                List.of(), Limits.DEFAULTS);
        api = HttpApi.start(new InetSocketAddress("127.0.0.1", 0), null, server.server().registry(), null,
                HttpAccess.ALLOW_ALL);
    }

    @AfterEach
    void stop() {
        if (api != null) {
            api.close();
        }
        if (server != null) {
            server.close();
        }
    }

    @Test
    void pageAndEveryFileItLoadsAreServedFromTheJarWithTheirTypes() throws Exception {
        HttpResponse<String> page = get("/");
        assertEquals(200, page.statusCode());
        assertEquals("text/html; charset=utf-8", page.headers().firstValue("Content-Type").orElse(""));
        Map<String, String> types = Map.of("js", "text/javascript; charset=utf-8",
                "css", "text/css; charset=utf-8", "svg", "image/svg+xml");
        Matcher references = LOCAL_REFERENCE.matcher(page.body());
        int files = 0;
        while (references.find()) {
            String file = references.group(1);
            assertFalse(file.contains("//"), "the page loads nothing from elsewhere: " + file);
            HttpResponse<String> asset = get("/" + file);
            assertEquals(200, asset.statusCode(), file);
            assertEquals(types.get(file.substring(file.lastIndexOf('.') + 1)),
                    asset.headers().firstValue("Content-Type").orElse(""), file);
            files++;
            Matcher imports = MODULE_IMPORT.matcher(asset.body());
            while (imports.find()) {
                assertEquals(200, get("/" + imports.group(1)).statusCode(), file + " imports " + imports.group(1));
                files++;
            }
        }
        assertEquals(4, files, "index.html's stylesheet, icon and script, and the plot module the script imports");
    }

    @Test
    void modelNamedWithSlashesIsReadThroughItsEncodedName() throws Exception {
        String name = "sweep/radam/lr=0.003/seed=1";
        try (OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + server.port())) {
            client.register(TestData.spec(name, "RAdam", TestData.hp("lr", 0.003), 4).build(),
                    TestData.data(TestData.random(4, 1)));
        }
        String encoded = "/api/models/sweep%2Fradam%2Flr%3D0.003%2Fseed%3D1";
        HttpResponse<String> info = get(encoded);
        assertEquals(200, info.statusCode(), info.body());
        assertEquals(name, json.readTree(info.body()).get("name").asText());
        for (String route : List.of("/figures", "/history", "/snapshots")) {
            assertEquals(200, get(encoded + route).statusCode(), route);
        }
        HttpResponse<String> unencoded = get("/api/models/" + name);
        assertEquals(404, unencoded.statusCode(), "unencoded, the slashes are route separators");
        JsonNode error = json.readTree(unencoded.body());
        assertTrue(error.get("error").asText().contains("no such API route"), error.toString());
    }

    private HttpResponse<String> get(String path) throws Exception {
        return http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + api.port() + path)).build(),
                HttpResponse.BodyHandlers.ofString());
    }
}
