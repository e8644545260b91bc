from django.db import models

DEFAULT_TENANT_SLUG = "default"


class Tenant(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @classmethod
    def default(cls) -> "Tenant":
        tenant, _ = cls.objects.get_or_create(
            slug=DEFAULT_TENANT_SLUG, defaults={"name": "Default"}
        )
        return tenant
